"""Peak memory of `geoddu sample` on a 16384^2 class map against a 4096^2 one (issue 25).

Writes two class maps (uint8, 512x512 tiles, DEFLATE, nodata 255 around a border, six classes
in patches, one of them rare), then runs `geoddu sample MAP -o points.gpkg --n N` on each as its
own process and prints the peak RSS the kernel reports for it (wait4's ru_maxrss). The map is
read twice, window by window, so the peak should not grow with the map (16x the pixels), only
with the sample.

    python benchmarks/sample_memory.py [--sizes 4096,16384] [--n 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).parent))
from _common import workdir  # noqa: E402

NAMES = ["water", "forest", "grass", "crop", "urban", "wetland"]


def make_map(path: Path, size: int) -> Path:
    """A size^2 class map: patches of 64x64 pixels of random classes (wetland rare), with
    pixel noise and a nodata frame of 100 pixels; written strip by strip."""
    if path.exists():
        return path
    rng = np.random.default_rng(size)
    patches = rng.choice(6, size=(size // 64 + 1, size // 64 + 1),
                         p=[0.2, 0.35, 0.2, 0.15, 0.09, 0.01]).astype(np.uint8)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint8",
                   crs="EPSG:32631", transform=from_origin(500000, 4000000, 10, 10),
                   nodata=255, tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER")
    tmp = path.with_suffix(".partial.tif")
    step = 1024
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(CLASS_NAMES=json.dumps(NAMES))
        for r in range(0, size, step):
            h = min(step, size - r)
            rows = np.arange(r, r + h) // 64
            block = patches[rows][:, np.arange(size) // 64]
            noise = rng.random((h, size)) < 0.05
            block = np.where(noise, rng.integers(0, 6, (h, size), dtype=np.uint8), block)
            yy = np.arange(r, r + h)[:, None]
            xx = np.arange(size)[None, :]
            frame = (yy < 100) | (yy >= size - 100) | (xx < 100) | (xx >= size - 100)
            block = np.where(frame, np.uint8(255), block).astype(np.uint8)
            dst.write(block, 1, window=Window(0, r, size, h))
    tmp.rename(path)
    return path


def run_alone(src: Path, out: Path, n: int) -> tuple[float, float, str]:
    """`geoddu sample SRC -o OUT --n N` as its own process: (its peak RSS in MB as the kernel
    reports it through wait4, seconds, what it wrote)."""
    cmd = [sys.executable, "-m", "geoddu.cli", "sample", str(src), "-o", str(out), "--n", str(n),
           "--min-per-class", "50", "--seed", "1", "--overwrite", "--json"]
    started = time.perf_counter()
    with open(out.with_suffix(".stdout"), "w+") as so, open(out.with_suffix(".stderr"),
                                                             "w+") as se:
        proc = subprocess.Popen(cmd, stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        so.seek(0)
        se.seek(0)
        stdout, stderr = so.read(), se.read()
    if proc.returncode != 0:
        raise SystemExit(f"geoddu sample failed: {stderr.strip()}")
    summary = json.loads(stdout)
    return usage.ru_maxrss / 1024, seconds, (
        f"{summary['points']} points in {len(summary['strata'])} strata, "
        f"{summary['windows']} windows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="4096,16384", help="map sides [4096,16384]")
    ap.add_argument("--n", type=int, default=2000, help="points [2000]")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = workdir(args.workdir, "geoddu-sample-memory-")
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        t0 = time.perf_counter()
        src = make_map(work / f"classes_{size}.tif", size)
        made = time.perf_counter() - t0
        mb = src.stat().st_size / 2**20
        rss, seconds, what = run_alone(src, work / f"points_{size}.gpkg", args.n)
        results.append((size, rss))
        print(f"{size}^2 map ({size * size / 1e6:.0f} Mpx, {mb:.0f} MB on disk, made in "
              f"{made:.0f} s): geoddu sample --n {args.n} --min-per-class 50: peak RSS "
              f"{rss:.0f} MB, {seconds:.1f} s; {what}")
    if len(results) > 1:
        (s0, r0), (s1, r1) = results[0], results[-1]
        print(f"peak RSS {s1}^2 / {s0}^2: {r1 / r0:.3f} for {(s1 / s0) ** 2:.0f}x the pixels")


if __name__ == "__main__":
    main()
