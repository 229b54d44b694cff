"""Seams at sheet borders: a real scene cut into 2 x 2 sheets, segmented three ways, each
compared with the whole-scene forward (`geoddu segment` on the uncut scene):

1. per file: each sheet segmented on its own (what `--output-dir` without `--mosaic` does);
2. windows: overlapping sliding windows over the scene (25% overlap, centre-cropped), each
   run through the model on its own (`predict`), the usual tiled inference;
3. `--mosaic`: the sheets as one scene (a VRT over them).

Prints the pixels each gets wrong, by distance to the nearest sheet border, and writes a PNG
of the three difference maps (red: a class other than the whole scene's; grey: nodata; blue
lines: sheet borders) with GDAL's PNG driver.

    python benchmarks/seams.py SCENE.tif [-m model.pt] [--png docs/seams.png]

Without -m a small untrained DDU-Net(3,16,Y) is made (benchmarks/_common.make_checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_checkpoint, workdir  # noqa: E402

import geoddu  # noqa: E402

BINS = (0, 8, 16, 32, 64, 128)


def cut_sheets(scene: Path, folder: Path, cut: tuple[int, int],
               ) -> list[tuple[Path, tuple[slice, slice]]]:
    """2 x 2 sheets of the scene, split at row and column ``cut``, on its grid."""
    with rasterio.open(scene) as src:
        h, w = src.height, src.width
        profile = src.profile
        data = src.read()
        mask = src.dataset_mask()
    sheets = []
    for i, (r0, r1) in enumerate(((0, cut[0]), (cut[0], h))):
        for j, (c0, c1) in enumerate(((0, cut[1]), (cut[1], w))):
            path = folder / f"sheet_{i}{j}.tif"
            part = dict(profile, width=c1 - c0, height=r1 - r0, tiled=False,
                        transform=profile["transform"] * Affine.translation(c0, r0))
            part.pop("blockxsize", None)
            part.pop("blockysize", None)
            with rasterio.open(path, "w", **part) as dst:
                dst.write(data[:, r0:r1, c0:c1])
                if profile.get("nodata") is None and not mask.all():
                    dst.write_mask(mask[r0:r1, c0:c1])
            sheets.append((path, (slice(r0, r1), slice(c0, c1))))
    return sheets


def classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def windows(scene: Path, ckpt: Path, window: int, overlap: int) -> np.ndarray:
    """Sliding windows over the scene, each predicted alone, centre-cropped and pasted."""
    model = geoddu.load_model(ckpt)
    half = overlap // 2
    with rasterio.open(scene) as src:
        h, w = src.height, src.width
        out = np.full((h, w), 255, np.uint8)
        step = window - overlap
        for r in range(0, h, step):
            for c in range(0, w, step):
                r0, c0 = min(r, max(0, h - window)), min(c, max(0, w - window))
                win = Window(c0, r0, window, window)
                img = src.read(window=win, boundless=True, fill_value=0)
                ok = src.dataset_mask(window=win, boundless=True) > 0
                with torch.inference_mode():
                    got = model.predict(img, ok)
                top = 0 if r0 == 0 else half
                left = 0 if c0 == 0 else half
                bottom = window if r0 + window >= h else window - half
                right = window if c0 + window >= w else window - half
                out[r0 + top : r0 + bottom, c0 + left : c0 + right] = got[top:bottom,
                                                                          left:right]
    return out


def border_distance(shape: tuple[int, int], cut: tuple[int, int]) -> np.ndarray:
    """Pixels to the nearest sheet border (the cuts)."""
    h, w = shape
    rows = np.abs(np.arange(h) - cut[0] + 0.5) - 0.5
    cols = np.abs(np.arange(w) - cut[1] + 0.5) - 0.5
    return np.minimum(rows[:, None], cols[None, :]).astype(int)


def picture(whole: np.ndarray, results: dict[str, np.ndarray], cut: tuple[int, int],
            path: Path) -> None:
    """The difference maps side by side, 8 px apart, as an RGB PNG."""
    h, w = whole.shape
    gap = 8
    img = np.full((3, h, len(results) * (w + gap) - gap), 255, np.uint8)
    for k, got in enumerate(results.values()):
        x = k * (w + gap)
        panel = img[:, :, x : x + w]
        panel[:, whole == 255] = 200
        wrong = (got != whole) & (whole != 255)
        panel[:, wrong] = np.array([220, 30, 30], np.uint8)[:, None]
        panel[:, cut[0], :] = np.array([40, 90, 220], np.uint8)[:, None]
        panel[:, :, cut[1]] = np.array([40, 90, 220], np.uint8)[:, None]
    with warnings.catch_warnings():  # a picture, not a map: no georeferencing wanted
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=img.shape[2], height=h, count=3,
                           dtype="uint8") as dst:
            dst.write(img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scene", type=Path)
    ap.add_argument("-m", "--model", type=Path, default=None)
    ap.add_argument("--subimage-size", type=int, default=128,
                    help="of the checkpoint made without -m [128]")
    ap.add_argument("--window", type=int, default=256, help="sliding window [256]")
    ap.add_argument("--png", type=Path, default=Path("seams.png"))
    ap.add_argument("--aligned", action="store_true",
                    help="cut at a multiple of the subimage size below half the scene, so "
                         "that each sheet's subimage grid is the scene's [cut at half]")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = workdir(args.workdir, "geoddu-seams-")
    ckpt = args.model or make_checkpoint(work / "model.pt", "DDU-Net(3,16,Y)", 8,
                                         args.subimage_size)
    with rasterio.open(args.scene) as src:
        cut = (src.height // 2, src.width // 2)
    if args.aligned:
        size = geoddu.load_model(ckpt).subimage_size
        cut = (cut[0] // size * size, cut[1] // size * size)
    (work / "sheets").mkdir(exist_ok=True)
    sheets = cut_sheets(args.scene, work / "sheets", cut)
    geoddu.segment(args.scene, work / "whole.tif", ckpt, overwrite=True)
    whole = classes(work / "whole.tif")

    per_file = np.full_like(whole, 255)
    for path, window in sheets:
        geoddu.segment(path, work / f"one-{path.name}", ckpt, overwrite=True)
        per_file[window] = classes(work / f"one-{path.name}")
    overlap = args.window // 4
    results = {
        "per file": per_file,
        f"windows {args.window} px, {overlap} px overlap": windows(args.scene, ckpt,
                                                                   args.window, overlap),
    }
    geoddu.segment([p for p, _ in sheets], work / "mosaic.tif", ckpt, mosaic=True,
                   overwrite=True)
    results["--mosaic"] = classes(work / "mosaic.tif")

    valid = whole != 255
    dist = border_distance(whole.shape, cut)
    spans = list(zip(BINS, [*BINS[1:], None], strict=True))
    head = " | ".join(f"{a}-{b - 1} px" if b else f">= {a} px" for a, b in spans)
    print(f"scene {args.scene.name}: {whole.shape[1]} x {whole.shape[0]} px, "
          f"{int(valid.sum())} valid, 2 x 2 sheets cut at row {cut[0]}, column {cut[1]}; "
          f"model {ckpt}")
    print(f"| run | pixels wrong | share | by distance to a sheet border: {head} |")
    print("|---|---|---|" + "---|" * (len(BINS)))
    for name, got in results.items():
        wrong = (got != whole) & valid
        counts = [int((wrong & (dist >= a) & (dist < (b or 1 << 30))).sum())
                  for a, b in spans]
        print(f"| {name} | {int(wrong.sum())} | {wrong.sum() / valid.sum():.2%} | "
              + " | ".join(map(str, counts)) + " |")
    picture(whole, results, cut, args.png)
    print(f"difference maps (left to right: {', '.join(results)}): {args.png}")


if __name__ == "__main__":
    main()
