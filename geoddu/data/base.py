"""What every training dataset provides: fixed-size patches as raw arrays, plus their description.

A dataset returns *raw* pixel values (float32, bands x H x W) and class ids (int64, H x W); the
trainer normalises with `dataset.normalization`, the same numbers the checkpoint stores, so
`geoddu segment` later sees inputs exactly as training did. Invalid (nodata) pixels come back
set to the band mean, i.e. 0 after normalisation (the predictor's nodata rule), and labelled
`ignore_index`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from ..documents import parse_json, parse_yaml
from ..errors import GeodduError
from ..model_config import MAX_CLASSES

# Label value that neither the loss nor IoU counts (nodata in label rasters, no polygon, ...).
IGNORE = 255


class PatchDataset(torch.utils.data.Dataset):
    """Base class: subclasses fill in the attributes below and implement `__getitem__`."""

    kind: str = "patches"
    classes: list[dict[str, Any]]
    bands: list[int]
    normalization: dict[str, list[float]]
    ignore_index: int | None = None
    # (rows, cols) of the subimage grid a patch naturally has (the synthetic set: 1 x k);
    # None lets the trainer's --subimages decide.
    grid: tuple[int, int] | None = None
    patch_shape: tuple[int, int]

    def __len__(self) -> int:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split_from(self, root: str | os.PathLike, split: str, patch_size: int, seed: int,
                   val_fraction: float, test_fraction: float) -> None:
        """The options every folder-backed dataset is cut into splits and patches by."""
        self.root = Path(root)
        self.split = check_split(split)
        self.patch_size = int(patch_size)
        self.seed = int(seed)
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)

    def describe(self) -> dict[str, Any]:
        """Plain-data record of how the dataset was built (stored in the checkpoint)."""
        return {"kind": self.kind}

    def split_record(self) -> dict[str, Any]:
        """`describe`'s part for a dataset set up by `split_from`."""
        return {"kind": self.kind, "patch_size": self.patch_size, "seed": self.seed,
                "val_fraction": self.val_fraction, "test_fraction": self.test_fraction}

    def data_description(self) -> dict[str, Any] | None:
        """What the pixels are, for the checkpoint's "data" record (see
        geoddu.checkpoint_metadata._check_data): pixel size and its units, data type, value
        range per band and how that range was found. None: the dataset cannot say."""
        return None


def pixel_size_of(src: Any) -> tuple[list[float] | None, str | None]:
    """Map units per pixel ([x, y]) of an open raster and the CRS's unit name; (None, None)
    for a plain image (no CRS, identity transform: a JPG or PNG has no pixel size to tell)."""
    t, crs = src.transform, src.crs
    if crs is None and t.is_identity:
        return None, None
    size = [math.hypot(t.a, t.d), math.hypot(t.b, t.e)]
    if not all(math.isfinite(v) and v > 0 for v in size):
        return None, None
    units = None
    if crs is not None:
        units = "degree" if crs.is_geographic else crs.linear_units
        units = None if not units or units == "unknown" else str(units)
    return size, units


def dtype_range(dtype: Any, bands: int) -> list[list[float]]:
    """The full range of a data type, once per band (a value range that measured nothing)."""
    dtype = np.dtype(dtype)
    info = np.iinfo(dtype) if dtype.kind in "iu" else np.finfo(dtype)
    return [[float(info.min), float(info.max)] for _ in range(bands)]


def data_record(
    pixel_size: list[float] | None,
    units: str | None,
    dtype: Any,
    value_range: list[list[float]] | None,
    value_range_from: str,
) -> dict[str, Any]:
    return {
        "pixel_size": pixel_size,
        "units": units,
        "dtype": np.dtype(dtype).name,
        "value_range": value_range,
        "value_range_from": value_range_from,
    }


def uint8_normalization(bands: int) -> dict[str, list[float]]:
    """8-bit data: x -> x / 255."""
    return {"mean": [0.0] * bands, "std": [255.0] * bands}


def split_indices(
    n: int, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, list[int]]:
    """A reproducible train/val/test partition of range(n) from a seed.

    With at least three items every split gets at least one, so tiny datasets still validate.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise GeodduError("validation and test fractions must be in [0, 1) and sum to less than 1")
    order = np.random.default_rng(seed).permutation(n).tolist()

    def count(fraction: float) -> int:
        if fraction == 0:
            return 0
        return max(1, round(n * fraction)) if n >= 3 else 0

    n_test, n_val = count(test_fraction), count(val_fraction)
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def check_split(split: str) -> str:
    if split not in ("train", "val", "test"):
        raise GeodduError(f"unknown split {split!r}; choose train, val or test")
    return split


def load_classes_file(path: str | Path) -> dict[str, Any]:
    """Read a classes file, the one format of `geoddu init --classes-file` and
    `geoddu train --classes-file` (docs/training.md): YAML (.yaml, .yml) or JSON (any other
    name), either a list of classes or {"classes": [...], ...}.

    Each class is a name alone ("water") or {"name": str, "color": [r, g, b]} (colour
    optional: a distinct default) with an optional "value" (what the label raster or the vector
    class column holds for it; default: the class index for rasters and the name for vectors).
    Other top-level keys (column, fill, ignore) are returned as well.
    """
    path = Path(path)
    kind = "YAML" if path.suffix.lower() in (".yaml", ".yml") else "JSON"
    if not path.is_file():
        raise GeodduError(f"{path}: classes file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GeodduError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    doc = parse_yaml(data, str(path)) if kind == "YAML" else parse_json(data, str(path))
    if isinstance(doc, list):
        doc = {"classes": doc}
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), list):
        raise GeodduError(f'{path}: expected a list of classes, e.g. [{{"name": "water", '
                          f'"color": [0, 0, 255]}}, ...]')
    if not doc["classes"]:
        raise GeodduError(f"{path}: lists no classes; a model needs at least one")
    classes = []
    for k, c in enumerate(doc["classes"]):
        if isinstance(c, str):
            c = {"name": c}
        if not isinstance(c, dict) or "name" not in c or str(c["name"]).strip() == "":
            raise GeodduError(f"{path}: class {k} needs a name")
        color = c.get("color")
        if color is None:
            from ..checkpoint_metadata import DEFAULT_COLORS

            color = DEFAULT_COLORS[k % len(DEFAULT_COLORS)]
        if not isinstance(color, (list, tuple)) or len(color) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in color
        ):
            raise GeodduError(f"{path}: class {c['name']!r}: colour must be [r, g, b] in 0-255")
        entry = {"name": str(c["name"]), "color": [int(v) for v in color]}
        if "value" in c:
            entry["value"] = c["value"]
        classes.append(entry)
    names = [c["name"] for c in classes]
    if len(set(names)) != len(names):
        raise GeodduError(f"{path}: class names must be unique")
    if len(classes) > MAX_CLASSES:
        raise GeodduError(f"{path}: at most {MAX_CLASSES} classes fit a uint8 class map")
    return {**doc, "classes": classes}

