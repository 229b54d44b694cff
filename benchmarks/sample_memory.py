"""Peak memory of `geoddu sample` on a 16384^2 class map against a 4096^2 one (issue 25).

Writes two class maps (uint8, 512x512 tiles, DEFLATE, nodata 255 around a border, six classes
in patches, one of them rare), then runs `geoddu sample MAP -o points.gpkg --n N` on each as its
own process and prints the peak RSS the kernel reports for it (wait4's ru_maxrss). The map is
read twice, window by window, so the peak should not grow with the map (16x the pixels), only
with the sample.

The maps are made by a child process: Linux keeps a process's peak RSS across fork and exec,
so a child started from a parent that had just held the map's strips reported the parent's
peak (483 MB instead of 248 in a first version of this script).

    python benchmarks/sample_memory.py [--sizes 4096,16384] [--n 2000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NAMES = ["water", "forest", "grass", "crop", "urban", "wetland"]


def make_map(path: Path, size: int) -> Path:
    """A size^2 class map: patches of 64x64 pixels of random classes (wetland rare), with
    pixel noise and a nodata frame of 100 pixels; written strip by strip."""
    # Imported here, in the child that makes the map: the parent stays small (docstring).
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

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
    ap.add_argument("--make", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make is not None:  # the child that writes one map (see the module docstring)
        make_map(args.make, int(args.sizes))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-sample-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    results = []
    for size in sizes:
        t0 = time.perf_counter()
        src = work / f"classes_{size}.tif"
        subprocess.run([sys.executable, __file__, "--make", str(src), "--sizes", str(size)],
                       check=True)
        made = time.perf_counter() - t0
        mb = src.stat().st_size / 2**20
        rss, seconds, what = run_alone(src, work / f"points_{size}.gpkg", args.n)
        results.append((size, rss))
        print(f"{size}^2 map ({size * size / 1e6:.0f} Mpx, {mb:.0f} MB on disk, made in "
              f"{made:.0f} s): geoddu sample --n {args.n} --min-per-class 50: peak RSS "
              f"{rss:.0f} MB, {seconds:.1f} s; {what}")
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(this script's own peak RSS, a floor for the figures above: {parent:.0f} MB)")
    if len(results) > 1:
        (s0, r0), (s1, r1) = results[0], results[-1]
        print(f"peak RSS {s1}^2 / {s0}^2: {r1 / r0:.3f} for {(s1 / s0) ** 2:.0f}x the pixels")


if __name__ == "__main__":
    main()
