"""DeepGlobe land cover (Sec. III-D2), from a folder the user downloaded.

Two layouts are accepted:

* the challenge's original one: `<id>_sat.jpg` + `<id>_mask.png` side by side, in DIR or in
  DIR/train;
* torchgeo's: `DIR/data/{training_data,test_data}/{images,masks}/` (DIR may also be the `data`
  folder itself). Its test_data becomes the test split.

Every image is cut into non-overlapping `patch_size` global patches (1024 as in the paper: a
2448 x 2448 image gives 2 x 2 patches, the rest is dropped). Splits are made per *image*, from a
seed, so patches of one image never land in two splits. Patches are read as windows.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeodduError
from ..io.raster import open_raster
from .base import (
    PatchDataset,
    data_record,
    dtype_range,
    pixel_size_of,
    split_indices,
    uint8_normalization,
)

CLASSES = [
    {"name": "urban", "color": [0, 255, 255]},
    {"name": "agriculture", "color": [255, 255, 0]},
    {"name": "rangeland", "color": [255, 0, 255]},
    {"name": "forest", "color": [0, 255, 0]},
    {"name": "water", "color": [0, 0, 255]},
    {"name": "barren", "color": [255, 255, 255]},
    {"name": "unknown", "color": [0, 0, 0]},
]
UNKNOWN = 6

# The colours are pure 0/255 per channel, so each class is one 3-bit code (r, g, b >= 128).
# Red (255, 0, 0) is not a DeepGlobe colour; such pixels count as unknown.
_CODE_TO_CLASS = np.full(8, UNKNOWN, np.uint8)
for _k, _c in enumerate(CLASSES):
    _r, _g, _b = (v >= 128 for v in _c["color"])
    _CODE_TO_CLASS[4 * _r + 2 * _g + _b] = _k

_SAT = re.compile(r"^(?P<id>.+)_sat\.jpg$", re.IGNORECASE)


def decode_mask(rgb: np.ndarray) -> np.ndarray:
    """RGB colour mask (3, H, W) -> class ids (H, W) uint8, thresholding each channel at 128.

    The thresholding is what the challenge asks for: its masks are JPEG-touched and not always
    exactly 0/255.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[0] < 3:
        raise GeodduError(f"a DeepGlobe mask needs 3 colour bands, got shape {rgb.shape}")
    bits = rgb[:3] >= 128
    return _CODE_TO_CLASS[4 * bits[0] + 2 * bits[1] + bits[2].astype(np.uint8)]


def find_images(root: str | os.PathLike) -> dict[str, Any]:
    """The labelled images under `root`: {"layout", "items": [(id, sat, mask)], "test": [...]}.

    "test" holds torchgeo's fixed test images (empty for the original layout).
    """
    root = Path(root)
    if not root.is_dir():
        raise GeodduError(f"{root}: DeepGlobe folder not found")
    for base in (root / "data", root):
        train_dir = base / "training_data"
        if train_dir.is_dir():
            items = _pairs(train_dir / "images", train_dir / "masks", "torchgeo")
            test_dir = base / "test_data"
            test = _pairs(test_dir / "images", test_dir / "masks", "torchgeo") \
                if test_dir.is_dir() else []
            return {"layout": "torchgeo", "items": items, "test": test}
    for folder in (root, root / "train"):
        if folder.is_dir() and any(_SAT.match(p.name) for p in folder.iterdir()):
            return {"layout": "original", "items": _pairs(folder, folder, "original"), "test": []}
    raise GeodduError(
        f"{root}: no DeepGlobe images found: expected <id>_sat.jpg + <id>_mask.png in {root} "
        f"(or {root / 'train'}), or torchgeo's {root / 'data/training_data/images'} and "
        f"{root / 'data/training_data/masks'}"
    )


def _pairs(image_dir: Path, mask_dir: Path, layout: str) -> list[tuple[str, Path, Path]]:
    if not image_dir.is_dir():
        raise GeodduError(f"{image_dir}: missing ({layout} DeepGlobe layout)")
    sats = sorted((m["id"], p) for p in image_dir.iterdir() if (m := _SAT.match(p.name)))
    if not sats:
        raise GeodduError(f"{image_dir}: no <id>_sat.jpg images")
    items, missing = [], []
    for image_id, sat in sats:
        mask = mask_dir / f"{image_id}_mask.png"
        if mask.is_file():
            items.append((image_id, sat, mask))
        else:
            missing.append(mask)
    if missing:
        shown = ", ".join(str(m) for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GeodduError(
            f"{len(missing)} DeepGlobe image(s) have no mask: {shown}{more} (the challenge's "
            f"valid/test folders have no masks; point --data at the labelled training folder)"
        )
    return items


class DeepGlobeDataset(PatchDataset):
    """One split of DeepGlobe as `patch_size` global patches, read window by window."""

    kind = "deepglobe"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        patch_size: int = 1024,
        seed: int = 0,
        val_fraction: float = 0.125,
        test_fraction: float = 0.125,
        ignore_unknown: bool = True,
    ) -> None:
        self.split_from(root, split, patch_size, seed, val_fraction, test_fraction)
        found = find_images(root)
        self.layout = found["layout"]
        items = found["items"]
        if found["test"]:
            # torchgeo fixes the test images; only train/val are drawn from the seed.
            parts = split_indices(len(items), seed, val_fraction, 0.0)
            chosen = found["test"] if split == "test" else [items[i] for i in parts[split]]
        else:
            parts = split_indices(len(items), seed, val_fraction, test_fraction)
            chosen = [items[i] for i in parts[split]]
        if not chosen:
            raise GeodduError(
                f"{root}: the {split} split is empty ({len(items)} labelled images); "
                f"add images or change the validation/test fractions"
            )
        self.images = chosen
        self.patches: list[tuple[int, int, int]] = []
        for n, (_, sat, _) in enumerate(chosen):
            with open_raster(sat) as src:
                h, w = src.height, src.width
                if n == 0:
                    # The challenge's JPGs carry no georeferencing, so no pixel size (the paper
                    # says 0.5 m; the files do not).
                    self.pixel_size, self.pixel_units = pixel_size_of(src)
                    self.dtype = src.dtype
            rows = range(0, h - self.patch_size + 1, self.patch_size)
            cols = range(0, w - self.patch_size + 1, self.patch_size)
            if not rows or not cols:
                raise GeodduError(
                    f"{sat}: {w} x {h} px is smaller than the {self.patch_size} px patch size"
                )
            self.patches += [(n, r, c) for r in rows for c in cols]
        self.classes = [dict(c) for c in CLASSES]
        self.bands = [1, 2, 3]
        self.normalization = uint8_normalization(3)
        self.ignore_index = UNKNOWN if ignore_unknown else None
        self.patch_shape = (self.patch_size, self.patch_size)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        n, r, c = self.patches[index]
        _, sat, mask = self.images[n]
        p = self.patch_size
        # One open per read keeps the dataset picklable for DataLoader workers; GDAL's JPEG and
        # PNG drivers decode only up to the window's last row.
        with open_raster(sat, bands=[1, 2, 3]) as src:
            image = src.read(r, c, p, p).astype(np.float32)
        with open_raster(mask) as src:
            if src.count < 3:
                raise GeodduError(f"{mask}: a DeepGlobe mask needs 3 colour bands")
            labels = decode_mask(src.read(r, c, p, p)[:3])
        return image, labels.astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {**self.split_record(), "layout": self.layout,
                "ignore_unknown": self.ignore_index is not None}

    def data_description(self) -> dict[str, Any]:
        # Measuring the range would decode every image: the data type's range, said so.
        return data_record(self.pixel_size, self.pixel_units, self.dtype,
                           dtype_range(self.dtype, 3), "dtype")
