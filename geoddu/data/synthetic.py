"""The paper's synthetic set (Sec. III-D1): two circles joined by a line only communication sees.

Each image is (k*32) wide and 32 high, grey (0 background, 255 circles), so it cuts into k
subimages of 32 x 32 side by side. Two white circles of radius 4 lie wholly inside two different
subimages; the mask has three classes: 0 background, 1 the line segment between the two centres
(in the mask only, not in the image), 2 the circles. A DDU-Net clone sees one subimage: it can
place the line only if the communication network tells it where the other circle is.

Stored on disk as `DIR/synthetic.json` (k, seed, counts, classes) and `DIR/{train,val,test}.npz`
(`images`, `masks`: uint8 arrays of N x 32 x k*32).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GeodduError
from ..version import __version__
from .base import PatchDataset, check_split, data_record, dtype_range, uint8_normalization

SUBIMAGE = 32
RADIUS = 4
# Pixels within this distance of the centre-to-centre segment are "line": a 3-pixel-wide line.
LINE_HALF_WIDTH = 1.0
PAPER_K = (2, 3, 4, 6, 8, 16)
SPLITS = ("train", "val", "test")
CLASSES = [
    {"name": "background", "color": [0, 0, 0]},
    {"name": "line", "color": [230, 159, 0]},
    {"name": "circle", "color": [255, 255, 255]},
]
META = "synthetic.json"


def generate(k: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`n` images and masks (uint8, n x 32 x 32k) drawn from `rng`."""
    if k < 1:
        raise GeodduError("k (subimages per image) must be at least 1")
    h, w = SUBIMAGE, SUBIMAGE * k
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = np.zeros((n, h, w), np.uint8)
    masks = np.zeros((n, h, w), np.uint8)
    for i in range(n):
        # Two different subimages (the same one only when there is just one), so the line
        # always crosses at least one subimage border.
        cells = rng.choice(k, size=2, replace=False) if k > 1 else np.array([0, 0])
        # Integer centres RADIUS + 1 from the subimage edges: no circle pixel lies on a border
        # row or column, so no subimage border touches a circle.
        cx = cells * SUBIMAGE + rng.integers(RADIUS + 1, SUBIMAGE - RADIUS - 1, size=2)
        cy = rng.integers(RADIUS + 1, SUBIMAGE - RADIUS - 1, size=2)
        circles = np.zeros((h, w), bool)
        for x0, y0 in zip(cx, cy, strict=True):
            circles |= (xx - x0) ** 2 + (yy - y0) ** 2 <= RADIUS**2
        line = _segment_distance(xx, yy, cx[0], cy[0], cx[1], cy[1]) <= LINE_HALF_WIDTH
        images[i][circles] = 255
        masks[i][line] = 1
        masks[i][circles] = 2
    return images, masks


def _segment_distance(xx, yy, x0, y0, x1, y1) -> np.ndarray:
    dx, dy = float(x1 - x0), float(y1 - y0)
    length2 = dx * dx + dy * dy
    if length2 == 0:
        return np.hypot(xx - x0, yy - y0)
    t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / length2, 0.0, 1.0)
    return np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy))


def write(
    out_dir: str | os.PathLike,
    k: int,
    *,
    train: int = 4000,
    val: int = 1000,
    test: int = 1000,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Generate and store one synthetic set; every split has its own seeded stream."""
    out = Path(out_dir)
    if (out / META).exists() and not overwrite:
        raise GeodduError(f"{out} already holds a synthetic set; pass --overwrite to replace it")
    if min(train, val, test) < 0:
        raise GeodduError("image counts must not be negative")
    out.mkdir(parents=True, exist_ok=True)
    counts = {"train": train, "val": val, "test": test}
    for s, split in enumerate(SPLITS):
        # Seeding each split from (seed, k, split) keeps e.g. the test set the same whatever
        # --train says.
        rng = np.random.default_rng([seed, k, s])
        images, masks = generate(k, counts[split], rng)
        tmp = out / f".{split}.tmp.npz"
        np.savez_compressed(tmp, images=images, masks=masks)
        os.replace(tmp, out / f"{split}.npz")
    meta = {
        "dataset": "geoddu-synthetic",
        "k": k,
        "seed": seed,
        "counts": counts,
        "image_size": [SUBIMAGE, SUBIMAGE * k],
        "subimage_size": SUBIMAGE,
        "radius": RADIUS,
        "line_half_width": LINE_HALF_WIDTH,
        "classes": CLASSES,
        "geoddu_version": __version__,
    }
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def read_meta(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / META
    if not path.is_file():
        raise GeodduError(
            f"{root}: not a synthetic set (no {META}); create one with `geoddu synth -o {root}`"
        )
    return json.loads(path.read_text())


class SyntheticDataset(PatchDataset):
    """One split of a stored synthetic set, held in memory (it is small)."""

    kind = "synthetic"

    def __init__(self, root: str | os.PathLike, split: str = "train") -> None:
        self.root = Path(root)
        self.split = check_split(split)
        self.meta = read_meta(root)
        path = self.root / f"{split}.npz"
        if not path.is_file():
            raise GeodduError(f"{path}: missing; regenerate the set with `geoddu synth`")
        with np.load(path) as z:
            self.images = z["images"]
            self.masks = z["masks"]
        self.k = int(self.meta["k"])
        self.classes = [dict(c) for c in CLASSES]
        self.bands = [1]
        self.normalization = uint8_normalization(1)
        self.grid = (1, self.k)
        self.patch_shape = (SUBIMAGE, SUBIMAGE * self.k)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = self.images[index].astype(np.float32)[None]
        return image, self.masks[index].astype(np.int64)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "k": self.k, "seed": int(self.meta["seed"])}

    def data_description(self) -> dict[str, Any]:
        # Arrays, not rasters: no pixel size. The split is in memory, so its range is exact.
        if not self.images.size:
            return data_record(None, None, self.images.dtype, dtype_range(self.images.dtype, 1),
                               "dtype")
        value_range = [[float(self.images.min()), float(self.images.max())]]
        return data_record(None, None, self.images.dtype, value_range, "all")
