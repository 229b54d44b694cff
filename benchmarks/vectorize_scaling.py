"""`geoddu vectorize` against GDAL's own polygonizer, and against polygonising the whole array.

Two benchmarks on a synthetic uint8 class map (tiled 512, DEFLATE, written window by window,
a nodata corner like a scene footprint), every run its own process:

* **against GDAL** (``--gdal``): ``gdal_polygonize.py`` (GDAL's polygonizer, run as GDAL ships
  it) and the ``geoddu vectorize`` command, alternated ``--repeats`` times, both writing a
  GeoPackage. Seconds, CPU seconds and peak RSS of each process (``os.wait4``: the child's own
  rusage), the ratios geoddu / GDAL of the medians, and whether both layers hold the same
  number of polygons and the same area per class. The map is random cells of 6 classes sized
  so that it holds about ``--regions`` regions (the worst case: ~8 pixels per region).
  Without ``gdal_polygonize.py`` (no GDAL Python bindings), rasterio.features.shapes (GDAL's
  polygonizer too) on the whole array plus a geopandas write stands in, and says so.
* **the table** (default): ``vectorize`` window by window against the naive way (read the
  whole array, one ``rasterio.features.shapes`` call, one GeoDataFrame), optionally with
  ``--min-area`` / ``--simplify``. The map is wavy ~64 px blocks with light salt-and-pepper
  noise, unless ``--regions`` is given.

    python benchmarks/vectorize_scaling.py --gdal --size 4096 --regions 2000000 [--repeats 2]
    python benchmarks/vectorize_scaling.py [--size 16384] [--window-size 512] [--workdir DIR]
        [--min-area M2] [--simplify TOL]

Wall times move with whatever else the machine is doing; CPU time is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from geoddu.resources import peak_rss_mb

CLASSES = ["water", "urban", "forest", "crop", "grass", "bare"]
# Regions per cell of a map of uniformly random cells of 6 classes, 4-connectivity (measured
# with rasterio.features.shapes on 512^2 random cells: 0.674).
REGIONS_PER_CELL = 0.674


def make_class_map(
    path: Path, size: int, seed: int = 0, regions: int | None = None, noise: float = 5e-4
) -> Path:
    """The synthetic class map: wavy blocks with a fraction ``noise`` of random pixels
    (``regions`` None), or ~``regions`` random cells."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    if regions is None:
        blocks = size // 64 + 2
        base = rng.integers(0, len(CLASSES), (blocks, blocks)).astype(np.uint8)
    else:
        # Cells of a (non-integer) side chosen so that the map holds about `regions` regions.
        cell = size * math.sqrt(REGIONS_PER_CELL / regions)
        n = int(size / cell) + 2
        cells = rng.integers(0, len(CLASSES), (n, n)).astype(np.uint8)
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
                if regions is None:
                    # Wavy block borders: polygons with many vertices, not just rectangles.
                    by = (yy + (9 * np.sin(xx / 23.0)).astype(int)) // 64 + 1
                    bx = (xx + (9 * np.cos(yy / 29.0)).astype(int)) // 64 + 1
                    cls = base[by, bx]
                    speck = rng.random((h, w)) < noise
                    cls[speck] = rng.integers(0, len(CLASSES), int(speck.sum()))
                else:
                    cls = cells[(yy / cell).astype(np.int64), (xx / cell).astype(np.int64)]
                cls[(yy + xx) < size // 8] = 255  # a nodata corner, like a scene footprint
                dst.write(cls, 1, window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def run_windowed(src: str, out: str, options: dict) -> dict:
    import geopandas  # noqa: F401 - imported before the clock starts, as in run_whole

    from geoddu.vectorize import vectorize

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


def layer_areas(path: str, field: str) -> dict:
    """Per class: number of polygons and their total area (read back from the written layer)."""
    import numpy as np
    import pyogrio.raw
    import shapely

    _, _, wkb, fields = pyogrio.raw.read(path, columns=[field])
    area = shapely.area(shapely.from_wkb(wkb))
    ids = np.asarray(fields[0], dtype=np.int64)
    count = np.bincount(ids, minlength=len(CLASSES))
    total = np.bincount(ids, weights=area, minlength=len(CLASSES))
    return {int(c): [int(count[c]), float(total[c])] for c in np.flatnonzero(count)}


# --- against GDAL ------------------------------------------------------------------------------


def _child(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` as its own process; its wall time and its own rusage (peak RSS, CPU).

    os.wait4 returns the rusage of that child alone. This process stays small (it imports no
    numpy, GDAL or geoddu engine code), because Linux starts a child's peak RSS at its parent's
    when it execs.
    """
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{tail}")
    return {
        "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # KB on Linux
    }


def _one(job: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(job)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"{job['mode']} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare_gdal(args: argparse.Namespace, work: Path) -> None:
    label = f"classes_{args.size}_{args.regions}r" if args.regions else f"classes_{args.size}"
    t = time.perf_counter()
    src = str(work / f"{label}.tif")
    if not Path(src).exists():  # made in a child: the map's arrays must not grow this process
        _one({"mode": "make", "src": src, "size": args.size, "regions": args.regions})
    print(f"class map {args.size}^2 ({src}), ready in {time.perf_counter() - t:.0f} s", flush=True)

    polygonize = shutil.which("gdal_polygonize.py") or shutil.which("gdal_polygonize")
    gdal_out, geoddu_out = work / "gdal.gpkg", work / "geoddu.gpkg"
    if polygonize:
        gdal_name = f"GDAL {Path(polygonize).name}"
        gdal_cmd = [polygonize, "-q", "-of", "GPKG", src, str(gdal_out), "polygons", "class_id"]
    else:
        gdal_name = "rasterio.features.shapes, whole array (no gdal_polygonize.py here)"
        job = {"mode": "whole", "src": src, "out": str(gdal_out)}
        gdal_cmd = [sys.executable, __file__, "--one", json.dumps(job)]
    exe = Path(sys.executable).with_name("geoddu")
    cli = [str(exe)] if exe.exists() else [sys.executable, "-m", "geoddu.cli"]
    geoddu_cmd = [*cli, "vectorize", src, "-o", str(geoddu_out), "-q", "--overwrite"]
    geoddu_cmd += ["--window-size", str(args.window_size)]
    sides = {gdal_name: (gdal_cmd, gdal_out), "geoddu vectorize": (geoddu_cmd, geoddu_out)}

    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for i in range(args.repeats):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]  # alternate who goes first
        for name in order:
            cmd, out = sides[name]
            for stale in work.glob(f"{out.name}*"):
                stale.unlink()
            res = _child(cmd, work / f"{out.stem}.log")
            runs[name].append(res)
            print(
                f"run {i + 1} {name}: {res['seconds']:.1f} s ({res['cpu_seconds']:.1f} s CPU), "
                f"peak RSS {res['peak_rss_mb']:.0f} MB",
                flush=True,
            )

    med = {
        name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()
    }
    g, o = med[gdal_name], med["geoddu vectorize"]
    print()
    print(f"{args.size}^2 class map, median of {args.repeats} alternated runs per side")
    print("| | wall (s) | CPU (s) | peak RSS (MB) |")
    print("|---|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['seconds']:.1f} | {m['cpu_seconds']:.1f} | {m['peak_rss_mb']:.0f} |")
    print(
        f"geoddu / GDAL: time {o['seconds'] / g['seconds']:.2f}x, "
        f"CPU {o['cpu_seconds'] / g['cpu_seconds']:.2f}x, "
        f"peak RSS {o['peak_rss_mb'] / g['peak_rss_mb']:.2f}x"
    )

    a = _one({"mode": "areas", "path": str(gdal_out), "field": "class_id"})
    b = _one({"mode": "areas", "path": str(geoddu_out), "field": "class_id"})
    print("| class | polygons GDAL | polygons geoddu | area GDAL (m^2) | area geoddu (m^2) |")
    print("|---|---|---|---|---|")
    for c in sorted(set(a) | set(b), key=int):
        na, aa = a.get(c, [0, 0.0])
        nb, ab = b.get(c, [0, 0.0])
        print(f"| {CLASSES[int(c)]} | {na} | {nb} | {aa:.0f} | {ab:.0f} |")
    same_n = all(a.get(c, [0])[0] == b.get(c, [0])[0] for c in set(a) | set(b))
    worst = max(abs(a.get(c, [0, 0.0])[1] - b.get(c, [0, 0.0])[1]) for c in set(a) | set(b))
    total = sum(v[0] for v in a.values())
    print(
        f"{total} polygons; same polygons per class: {'yes' if same_n else 'NO'}; "
        f"largest per-class area difference: {worst:g} m^2"
    )


# --- the table ---------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--window-size", type=int, default=512)
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
    ap.add_argument(
        "--regions",
        type=int,
        default=None,
        help="A map of random cells with about this many regions (default: wavy blocks; "
        "with --gdal: 2000000).",
    )
    ap.add_argument(
        "--gdal",
        action="store_true",
        help="Compare the geoddu vectorize command with gdal_polygonize.py instead.",
    )
    ap.add_argument("--repeats", type=int, default=2, help="Runs per side with --gdal.")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        job = json.loads(args.one)
        if job["mode"] == "make":
            make_class_map(Path(job["src"]), job["size"], regions=job["regions"])
            print("{}")
            return
        if job["mode"] == "areas":
            print(json.dumps(layer_areas(job["path"], job["field"])))
            return
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
    if args.gdal:
        if args.regions is None:
            args.regions = 2_000_000
        compare_gdal(args, work)
        return
    t = time.perf_counter()
    name = f"classes_{args.size}_{args.regions}r" if args.regions else f"classes_{args.size}"
    src = str(make_class_map(work / f"{name}.tif", args.size, regions=args.regions))
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
