"""Time and peak RSS of `geoddu vectorize` (window by window) against polygonising the whole
class map at once with `rasterio.features.shapes`.

The class map is size x size uint8 (default 16384^2): wavy blocks of 6 classes (~64 px), light
salt-and-pepper noise like a model's output, and a nodata corner; tiled, DEFLATE, written
window by window. Each run is a fresh process, so its peak RSS (VmHWM) is its own; CPU time
(user + system, which includes imports) is printed beside the wall time because the wall time
moves with whatever else the machine is doing. Both
write the same GeoPackage (class_id, class_name, geometry).

    python benchmarks/vectorize_scaling.py [--size 16384] [--window-size 1024] [--workdir DIR]
        [--min-area M2] [--simplify TOL]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geoddu.resources import peak_rss_mb

CLASSES = ["water", "urban", "forest", "crop", "grass", "bare"]


def make_class_map(path: Path, size: int, seed: int = 0) -> Path:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    blocks = size // 64 + 2
    base = rng.integers(0, len(CLASSES), (blocks, blocks)).astype(np.uint8)
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 4000000, 1.0, 1.0),
        nodata=255,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="IF_SAFER",
    )
    tmp = path.with_suffix(".partial.tif")
    step = 2048
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.update_tags(CLASS_NAMES=json.dumps(CLASSES))
        for r in range(0, size, step):
            for c in range(0, size, step):
                h, w = min(step, size - r), min(step, size - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                # Wavy block borders: polygons with many vertices, not just rectangles.
                by = (yy + (9 * np.sin(xx / 23.0)).astype(int)) // 64 + 1
                bx = (xx + (9 * np.cos(yy / 29.0)).astype(int)) // 64 + 1
                cls = base[by, bx]
                speck = rng.random((h, w)) < 5e-4
                cls[speck] = rng.integers(0, len(CLASSES), int(speck.sum()))
                cls[(yy + xx) < size // 8] = 255  # a nodata corner, like a scene footprint
                dst.write(cls, 1, window=Window(c, r, w, h))
    tmp.rename(path)
    return path



def run_windowed(src: str, out: str, options: dict) -> dict:
    import geopandas  # noqa: F401 - imported before the clock starts, as in run_whole

    from geoddu.io.polygonize import vectorize

    t = time.perf_counter()
    r = vectorize(src, out, overwrite=True, **options)
    return {"seconds": time.perf_counter() - t, "polygons": r.polygons}


def run_whole(src: str, out: str) -> dict:
    """The naive way: the whole array in memory, one `shapes` call, one GeoDataFrame."""
    import geopandas as gpd
    import numpy as np
    import rasterio
    import rasterio.features
    import shapely

    t = time.perf_counter()
    with rasterio.open(src) as ds:
        cls = ds.read(1)
        transform, crs = ds.transform, ds.crs
    shapes = list(
        rasterio.features.shapes(cls, mask=cls != 255, connectivity=4, transform=transform)
    )
    del cls
    geoms = np.array([shapely.geometry.shape(g) for g, _ in shapes], dtype=object)
    ids = np.array([v for _, v in shapes], dtype=np.int32)
    del shapes
    gdf = gpd.GeoDataFrame(
        {"class_id": ids, "class_name": np.array(CLASSES)[ids]}, geometry=geoms, crs=crs.to_wkt()
    )
    gdf.to_file(out, driver="GPKG", layer="whole")
    return {"seconds": time.perf_counter() - t, "polygons": len(gdf)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--window-size", type=int, default=1024)
    ap.add_argument(
        "--min-area",
        type=float,
        default=None,
        help="Also time a windowed run with this --min-area (m^2; the pixels are 1 m).",
    )
    ap.add_argument(
        "--simplify",
        type=float,
        default=None,
        help="Also time a windowed run with this --simplify (m).",
    )
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        if job["mode"] == "whole":
            res = run_whole(job["src"], job["out"])
        else:
            res = run_windowed(job["src"], job["out"], job["options"])
        res["peak_rss_mb"] = peak_rss_mb()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        res["cpu_seconds"] = usage.ru_utime + usage.ru_stime  # less sensitive to busy CPUs
        print(json.dumps(res))
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-vbench-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    src = str(make_class_map(work / f"classes_{args.size}.tif", args.size))
    print(f"class map {args.size}^2 ({src}), made in {time.perf_counter() - t:.0f} s", flush=True)
    windows = f"windows {args.window_size}^2"
    base = {"window_size": args.window_size}
    runs = [
        (f"geoddu vectorize, {windows}", {"mode": "windowed", "options": base}),
        ("whole array, one `shapes` call", {"mode": "whole"}),
    ]
    if args.min_area:
        runs.append(
            (
                f"geoddu vectorize --min-area {args.min_area:g}, {windows}",
                {"mode": "windowed", "options": {**base, "min_area": args.min_area}},
            )
        )
    if args.simplify:
        runs.append(
            (
                f"geoddu vectorize --simplify {args.simplify:g}, {windows}",
                {"mode": "windowed", "options": {**base, "simplify": args.simplify}},
            )
        )
    rows = []
    for i, (label, job) in enumerate(runs):
        job = {**job, "src": src, "out": str(work / f"run{i}.gpkg")}
        proc = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            print(f"{label}: failed\n{proc.stderr[-2000:]}", flush=True)
            rows.append((label, None))
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append((label, res))
        print(
            f"{label}: {res['seconds']:.1f} s ({res['cpu_seconds']:.1f} s CPU), "
            f"peak RSS {res['peak_rss_mb']:.0f} MB, "
            f"{res['polygons']} polygons",
            flush=True,
        )
    print()
    print(f"| {args.size}^2 class map | wall time (s) | CPU time (s) | peak RSS (MB) | polygons |")
    print("|---|---|---|---|---|")
    for label, res in rows:
        if res is None:
            print(f"| {label} | failed | | | |")
        else:
            secs, cpu, rss, n = (
                res[k] for k in ("seconds", "cpu_seconds", "peak_rss_mb", "polygons")
            )
            print(f"| {label} | {secs:.1f} | {cpu:.1f} | {rss:.0f} | {n} |")


if __name__ == "__main__":
    main()
