"""Peak memory of a mosaic against one of its tiles (issue 24: within 15%).

Writes an N x N grid of T x T 3-band GeoTIFF tiles (one scene cut into sheets, each with its own
transform), then runs `geoddu segment TILES/ --mosaic -o map.tif` and `geoddu segment
TILE -o one.tif`, each as its own process, and compares the peak RSS each prints. The mosaic is
one scene N times the side: the engine's memory is set by a strip's width, not by the scene,
and the VRT reads each window from the tiles it touches.

    python benchmarks/mosaic_memory.py [--tiles 4] [--tile-size 4096] [--precision bf16]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_model_options, make_checkpoint, workdir  # noqa: E402

PIXEL = 0.5


def make_tiles(folder: Path, n: int, size: int) -> list[Path]:
    """n x n tiles of size^2 of one smooth noisy scene, each on its own part of the grid."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (3, 64, 64)).astype(np.float32)
    paths = []
    for i in range(n):
        for j in range(n):
            path = folder / f"tile_{i}_{j}.tif"
            paths.append(path)
            if path.exists():
                continue
            transform = from_origin(500000 + j * size * PIXEL, 4000000 - i * size * PIXEL,
                                    PIXEL, PIXEL)
            profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                           crs="EPSG:32631", transform=transform, tiled=True, blockxsize=512,
                           blockysize=512, compress="deflate")
            tmp = path.with_suffix(".partial.tif")
            with rasterio.open(tmp, "w", **profile) as dst:
                step = 2048
                for r in range(0, size, step):
                    for c in range(0, size, step):
                        h, w = min(step, size - r), min(step, size - c)
                        yy, xx = np.mgrid[i * size + r: i * size + r + h,
                                          j * size + c: j * size + c + w]
                        pattern = base[:, (yy // 97) % 64, (xx // 89) % 64]
                        noise = rng.normal(0, 12, (3, h, w))
                        dst.write(np.clip(pattern + noise, 0, 255).astype(np.uint8),
                                  window=Window(c, r, w, h))
            tmp.rename(path)
    return paths


def segment(args: list[str]) -> tuple[float, str]:
    """Run `geoddu segment ARGS`; (peak RSS in MB as it prints it, its summary line)."""
    r = subprocess.run([sys.executable, "-m", "geoddu.cli", "segment", *args, "--overwrite"],
                       capture_output=True, text=True, check=True)
    line = r.stdout.strip().splitlines()[-1]
    return float(re.search(r"peak RSS (\d+) MB", line).group(1)), line


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tiles", type=int, default=4, help="tiles per side [4]")
    ap.add_argument("--tile-size", type=int, default=4096)
    ap.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    add_model_options(ap, base_channels=8, subimage_size=256)
    args = ap.parse_args()
    work = workdir(args.workdir, "geoddu-mosaic-memory-")
    ckpt = make_checkpoint(work / "model.pt", args.model, args.base_channels, args.subimage_size)
    tiles = make_tiles(work / "tiles", args.tiles, args.tile_size)
    common = ["-m", str(ckpt), "--precision", args.precision]
    one, one_line = segment([str(tiles[0]), "-o", str(work / "one.tif"), *common])
    many, many_line = segment([str(work / "tiles"), "--mosaic", "-o", str(work / "map.tif"),
                               *common])
    print(f"model {args.model} base {args.base_channels}, subimages {args.subimage_size}^2, "
          f"{args.precision}; tiles {args.tile_size}^2")
    print(f"one tile:             {one_line}")
    print(f"mosaic of {args.tiles}x{args.tiles}:      {many_line}")
    print(f"peak RSS mosaic / one tile: {many / one:.3f} (goal <= 1.15)")


if __name__ == "__main__":
    main()
