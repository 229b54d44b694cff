"""The pixel-size rule: is a scene's pixel size the one its model was trained at?

A model sees structures at the scale it was trained on: buildings of 20 pixels at 0.5 m are 4
pixels at 2.5 m, and the same weights then map them poorly, without any error. The model's
pixel size comes from its card (``pixel_size``, ``crs_units``: geoddu.card) or else from the
older "data" record (``pixel_size``, ``units``: geoddu.checkpoint); a model that records
neither is not checked.

The rule (one, for the warning of geoddu.engine.scene_check, ``--strict`` and ``--resample``):
pixel sizes more than :data:`PIXEL_RATIO` apart on either axis, either way, differ. Sizes are
compared only in the same units: a scene in degrees against a model in metres is said, not
compared. Pure: facts in, text out; no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["PIXEL_RATIO", "PixelSize", "model_pixel_size", "pixel_clause", "pixel_difference",
           "pixel_ratio", "size_text"]

# Sizes more than this many times apart (either way, on either axis) differ. 1.5 catches a
# 1 m model on 0.5 m imagery or 2.5 m imagery, and leaves 0.8 m on a 1 m model alone.
PIXEL_RATIO = 1.5
ADVICE = "pass --resample to read it at the model's pixel size"


@dataclass(frozen=True)
class PixelSize:
    """Map units per pixel [x, y] and the CRS's linear unit ("metre", "degree", None)."""

    size: tuple[float, float]
    units: str | None = None

    def text(self, units: str | None = None) -> str:
        """'10 m', '0.5 x 0.6 m', '0.0001°', '3 map-unit'."""
        return size_text(self.size, self.units or units)


def model_pixel_size(metadata: Mapping[str, Any] | None) -> PixelSize | None:
    """The pixel size a checkpoint was trained at: its card's, else its "data" record's;
    None when it records none."""
    if not metadata:
        return None
    card = metadata.get("card") or {}
    data = metadata.get("data") or {}
    for size, units in ((card.get("pixel_size"), card.get("crs_units")),
                        (data.get("pixel_size"), data.get("units"))):
        if size is not None and len(size) == 2 and all(_positive(v) for v in size):
            return PixelSize((float(size[0]), float(size[1])), units or None)
    return None


def pixel_ratio(scene: Sequence[float], model: Sequence[float]) -> float:
    """How many times apart two pixel sizes are on their worse axis (>= 1)."""
    return max(max(s / m, m / s) for s, m in zip(scene, model, strict=True))


def same_units(a: str | None, b: str | None) -> bool:
    """Unknown units compare with anything (a CRS without a unit name, a bare transform)."""
    return not a or not b or _unit(a) == _unit(b)


def pixel_difference(model: PixelSize | None, scene: PixelSize | None) -> tuple[str, str] | None:
    """How the scene's pixels differ from the model's: (a clause after the scene's name,
    "has 0.5 m pixels but ...", and what to do about it), or None when they do not differ (or
    nothing can be said)."""
    if model is None or scene is None:
        return None
    if not same_units(scene.units, model.units):
        return (f"has pixels in {_plural(scene.units)} but the model was trained on pixels in "
                f"{_plural(model.units)}, so their sizes cannot be compared",
                f"reproject the scene to a CRS in {_plural(model.units)} (gdalwarp -t_srs)")
    ratio = pixel_ratio(scene.size, model.size)
    if ratio <= PIXEL_RATIO:
        return None
    units = scene.units or model.units
    way = "larger" if _worse_is_larger(scene.size, model.size) else "smaller"
    return (f"has {size_text(scene.size, units)} pixels but the model was trained on "
            f"{size_text(model.size, units)} pixels ({_num(ratio)}x {way})",
            f"{ADVICE}, or use a model trained at its pixel size")


def pixel_clause(model: PixelSize | None, scene: PixelSize | None) -> str | None:
    """:func:`pixel_difference` as one clause, its advice after a semicolon."""
    found = pixel_difference(model, scene)
    return None if found is None else "; ".join(found)


def _worse_is_larger(scene: Sequence[float], model: Sequence[float]) -> bool:
    worst = max(zip(scene, model, strict=True), key=lambda sm: max(sm[0] / sm[1], sm[1] / sm[0]))
    return worst[0] > worst[1]


def size_text(size: Sequence[float], unit: str | None) -> str:
    """'10 m', '0.5 x 0.6 m', '0.0001°', '3 map-unit' (x and y alike within 0.1%)."""
    x, y = size
    text = _num(x) if math.isclose(x, y, rel_tol=1e-3) else f"{_num(x)} x {_num(y)}"
    if unit is None:
        return f"{text} map-unit"
    if _unit(unit) == "metre":
        return f"{text} m"
    return f"{text}°" if _unit(unit) == "degree" else f"{text} {unit}"


def _unit(unit: str) -> str:
    u = unit.lower()
    return {"meter": "metre", "meters": "metre", "metres": "metre", "m": "metre",
            "degrees": "degree", "deg": "degree"}.get(u, u)


def _plural(unit: str | None) -> str:
    u = _unit(unit or "map units")
    return {"metre": "metres", "degree": "degrees"}.get(u, u)


def _positive(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v) and v > 0


def _num(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"
