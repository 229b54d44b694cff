"""Is a scene like the data its model was trained on? One warning line when it is not.

A checkpoint written by `geoddu train` records its training data (the optional "data" key, see
geoddu.checkpoint): pixel size, data type and value range; its card records the pixel size too.
A scene of another data type family (16-bit on an 8-bit model), with pixels of another size
(the rule of geoddu.engine.pixel_size: more than 1.5x apart), or with values far outside the
trained range usually gives a poor map without any error. That is worth one line, never a
failure: the user may know better (a rescaled scene, a model that generalises); ``--strict``
makes the pixel size a failure (geoddu.engine.job).

:func:`scene_differences` is the comparison (pure: facts in, message out);
:func:`warn_if_unlike` gathers the scene's facts (a small sample of its pixels only when the
model recorded a measured range) and issues a :class:`geoddu.errors.GeodduWarning`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import GeodduWarning
from .pixel_size import PixelSize, model_pixel_size, pixel_difference

__all__ = ["SceneFacts", "dtype_family", "scene_differences", "warn_if_unlike"]

# Values further outside the trained [min, max] than this many times its width are "far".
VALUE_MARGIN = 1.0
# The value sample: up to SAMPLE_GRID x SAMPLE_GRID windows of SAMPLE_SIZE px, spread evenly.
SAMPLE_GRID = 3
SAMPLE_SIZE = 64


@dataclass(frozen=True)
class SceneFacts:
    """What is known about a scene, for :func:`scene_differences`."""

    name: str
    dtype: str
    pixel_size: Sequence[float] | None = None  # map units per pixel, [x, y]; None: no georef
    units: str | None = None  # the CRS's linear unit ("metre", "degree", ...)
    value_range: Sequence[Sequence[float]] | None = None  # [min, max] per model band, sampled

    @property
    def pixels(self) -> PixelSize | None:
        if self.pixel_size is None:
            return None
        return PixelSize((float(self.pixel_size[0]), float(self.pixel_size[1])), self.units)


def dtype_family(dtype: Any) -> str:
    """'8-bit integer', '16-bit integer', ..., or 'floating-point': signedness and float width
    do not change what a model sees after normalisation; the integer width usually does."""
    d = np.dtype(dtype)
    if d.kind == "f":
        return "floating-point"
    if d.kind in "iu":
        return f"{d.itemsize * 8}-bit integer"
    return d.name


def wants_values(data: Mapping[str, Any] | None, scene_dtype: Any) -> bool:
    """Whether the value comparison needs a sample of the scene: only for a measured range
    (a data type's full range says nothing) and the same data type family (another family is
    already the warning)."""
    return bool(
        data
        and data.get("value_range") is not None
        and data.get("value_range_from", "sample") != "dtype"
        and dtype_family(data["dtype"]) == dtype_family(scene_dtype)
    )


def scene_differences(data: Mapping[str, Any] | None, scene: SceneFacts,
                      pixels: PixelSize | None | bool = True) -> str | None:
    """One line saying how `scene` differs a lot from the training data `data` (a checkpoint's
    "data" record), or None when it does not, or when the model does not say. `pixels`: the
    model's pixel size (geoddu.engine.pixel_size.model_pixel_size, which prefers the card's);
    True: the one `data` records."""
    if pixels is True:
        pixels = model_pixel_size({"data": data})
    clauses: list[str] = []
    advice: list[str] = []
    family = bool(data) and dtype_family(scene.dtype) != dtype_family(data["dtype"])
    if family:
        clauses.append(f"is {scene.dtype} but the model was trained on {data['dtype']} data")
    size = pixel_difference(pixels or None, scene.pixels)
    if size:
        clauses.append(size[0])
    values = None if family or not data else _value_clause(data, scene)
    if values:
        clauses.append(values)
    if not clauses:
        return None
    if family or values:
        advice.append("check --bands and the normalisation")
    if size:
        advice.append(size[1])
    said = ", and it ".join(clauses)
    return f"{scene.name} {said}; {', and '.join(advice)}"


def _value_clause(data: Mapping[str, Any], scene: SceneFacts) -> str | None:
    if scene.value_range is None or not wants_values(data, scene.dtype):
        return None
    worst = None
    for band, ((lo, hi), (tlo, thi)) in enumerate(
        zip(scene.value_range, data["value_range"], strict=False), start=1
    ):
        margin = VALUE_MARGIN * max(thi - tlo, 0.5 * max(abs(tlo), abs(thi)), 1.0)
        beyond = max(tlo - margin - lo, hi - (thi + margin))
        if beyond > 0 and (worst is None or beyond > worst[0]):
            worst = (beyond, band, lo, hi, tlo, thi)
    if worst is None:
        return None
    _, band, lo, hi, tlo, thi = worst
    return (f"has values {_num(lo)} to {_num(hi)} in band {band} but the model was trained on "
            f"{_num(tlo)} to {_num(thi)}")


def _num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


# -- gathering the facts (I/O) ----------------------------------------------------------------
def scene_facts(source: Any, name: str, data: Mapping[str, Any] | None = None) -> SceneFacts:
    """The facts of an open RasterSource (opened with the model's bands); its pixels are
    sampled only when `data` has a measured range to compare them with."""
    from ..data.base import pixel_size_of

    dtype = np.dtype(source.dtype).name
    size, units = pixel_size_of(source)
    values = sample_range(source) if wants_values(data, dtype) else None
    return SceneFacts(name, dtype, size, units, values)


def sample_range(source: Any) -> list[list[float]] | None:
    """Per-band [min, max] of the valid pixels in a few small windows spread over the scene;
    None when they hold no valid pixel or cannot be read (segment then says why)."""
    h, w = source.height, source.width
    size_r, size_c = min(SAMPLE_SIZE, h), min(SAMPLE_SIZE, w)
    rows = np.linspace(0, h - size_r, SAMPLE_GRID).round().astype(int)
    cols = np.linspace(0, w - size_c, SAMPLE_GRID).round().astype(int)
    low = np.full(source.count, np.inf)
    high = np.full(source.count, -np.inf)
    try:
        for r in sorted(set(rows.tolist())):
            for c in sorted(set(cols.tolist())):
                image, valid = source.read_with_mask(r, c, size_r, size_c)
                v = image[:, valid].astype(np.float64)
                v = np.where(np.isfinite(v), v, np.nan)
                if v.shape[1] and not np.isnan(v).all():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN bands
                        low = np.fmin(low, np.nanmin(v, axis=1))
                        high = np.fmax(high, np.nanmax(v, axis=1))
    except Exception:  # noqa: BLE001 - a warning must never fail the run; segment reads again
        return None
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return None
    return [[float(a), float(b)] for a, b in zip(low, high, strict=True)]


def warn_if_unlike(metadata: Mapping[str, Any], source: Any, name: str) -> None:
    """Issue one GeodduWarning when the scene differs a lot from the model's training data
    (nothing for checkpoints that record neither a "data" record nor a card's pixel size, and
    only on the first rank)."""
    data = metadata.get("data")
    pixels = model_pixel_size(metadata)
    if (not data and pixels is None) or _other_rank():
        return
    message = scene_differences(data, scene_facts(source, name, data), pixels)
    if message:
        warnings.warn(message, GeodduWarning, stacklevel=3)


def _other_rank() -> bool:
    """Under torchrun every rank opens the job: rank 0 alone warns."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank() != 0
    except (ImportError, RuntimeError):
        pass
    return os.environ.get("RANK", "0") not in ("", "0")
