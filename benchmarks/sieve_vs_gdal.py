"""geoddu's two sieves (``vectorize --min-area``, ``--sieve gdal|smallest-first``) against GDAL's
sieve of the whole array in memory (``rasterio.features.sieve``, which is ``GDALSieveFilter``)
on the same class map: time, memory, what is left below the threshold, and why they differ.

* ``gdal`` (the default): the map staged window by window into a scratch file, GDAL's sieve
  from that file into a memory-mapped one, the windows read back (``sieve_gdal``). It must give
  exactly what GDAL gives on the array in memory: "pixels that differ" is 0.
* ``smallest-first`` (geoddu's own rule): pass 1 (``measure_regions``) window by window, the
  merges decided on the region graph, the plan applied to every window.

Each runs in its own process: seconds and CPU seconds of the sieve (reading the sieved windows
back included), and the process's peak resident memory (VmHWM, imports included, before the
comparison array is made; with ``gdal`` it counts the pages of the memory-mapped scratch file
still in memory: file-backed, dropped by the kernel when memory is short).

"Small regions left" counts the regions below T that still have a valid neighbour: the
guarantee of ``smallest-first`` (0) that GDAL's rule does not give. Every region whose pixels
differ between ``smallest-first`` and GDAL is put in one of these classes:

* ``gdal kept``: GDAL left a small region as it was: the chain of biggest neighbours (sizes
  before any merge) never reaches a region of T pixels (two small regions are each other's
  biggest neighbour). geoddu merges small regions together, smallest first, until they are
  big enough.
* ``geoddu kept``: geoddu kept the class of a region that started small: a neighbour merged
  before it took the same class and joined it to a region of that class (or smaller
  neighbours merged into it brought it to T pixels). GDAL judges every region by the sizes
  before any merge and moves it into its biggest neighbour.
* ``tie``: both moved it, to different classes, and its largest neighbours (sizes before any
  merge) are equally large with different classes: GDAL takes the first one its scan meets,
  geoddu the lower class id.
* ``chain``: both moved it, to different classes, and its largest neighbour is itself small:
  GDAL follows the chain of biggest neighbours with the original sizes; geoddu takes the
  largest neighbour after the smaller regions have merged.
* ``neighbour grew``: both moved it, to different classes, though its largest neighbour is
  big enough: a small neighbour merged first into another large region and so made that one
  a (larger) neighbour of this region when geoddu judged it.

    python benchmarks/sieve_vs_gdal.py [--size 2048] [--noise 0.05 | --regions 500000]
        [--threshold 10] [--window-size 512] [--workdir DIR]

Wall times move with whatever else the machine is doing; CPU seconds are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features

sys.path.insert(0, str(Path(__file__).parent))
from vectorize_scaling import make_class_map  # noqa: E402

from geoddu.resources import peak_rss_mb  # noqa: E402
from geoddu.vectorize.class_windows import NONE, ClassReader, window_grid  # noqa: E402
from geoddu.vectorize.sieve_gdal import gdal_sieve  # noqa: E402
from geoddu.vectorize.sieve_smallest_first import measure_regions  # noqa: E402

REASONS = ("gdal kept", "geoddu kept", "tie", "chain", "neighbour grew")


def run_sieve(method: str, src: str, threshold: int, window: int, out: Path) -> dict:
    """One sieve as ``vectorize`` runs it (in this process); the sieved map saved to ``out``."""
    reader = ClassReader(src)
    width, height = reader.source.width, reader.source.height
    windows = window_grid(height, width, window)
    quiet = lambda *a: None  # noqa: E731
    t, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory(prefix="sieve-", dir=out.parent) as folder:
        if method == "gdal":
            source = gdal_sieve(reader, windows, threshold, Path(folder), out, quiet, None)
            plan = None
        else:
            plan = measure_regions(reader, windows, width, height, threshold, quiet, None)
            source = reader
        peak = peak_rss_mb()
        sieved = np.empty((height, width), np.uint8)
        for index, (r0, c0, h, w) in enumerate(windows):
            if index and c0 == 0:
                source.next_row()
            cls = source.read(r0, c0, h, w)
            sieved[r0 : r0 + h, c0 : c0 + w] = cls if plan is None else plan.apply(index, cls)
        source.close()
        reader.close()
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    np.save(out, sieved)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": peak}


def label_regions(cls: np.ndarray) -> np.ndarray:
    """4-connected regions of equal class (NONE excluded, label -1): minimum-label propagation
    with pointer jumping."""
    h, w = cls.shape
    valid = cls != NONE
    lab = np.arange(h * w, dtype=np.int64).reshape(h, w)
    same_h = (cls[:, 1:] == cls[:, :-1]) & valid[:, 1:]
    same_v = (cls[1:, :] == cls[:-1, :]) & valid[1:, :]
    while True:
        old = lab.copy()
        np.minimum(lab[:, 1:], np.where(same_h, lab[:, :-1], lab[:, 1:]), out=lab[:, 1:])
        np.minimum(lab[:, :-1], np.where(same_h, lab[:, 1:], lab[:, :-1]), out=lab[:, :-1])
        np.minimum(lab[1:, :], np.where(same_v, lab[:-1, :], lab[1:, :]), out=lab[1:, :])
        np.minimum(lab[:-1, :], np.where(same_v, lab[1:, :], lab[:-1, :]), out=lab[:-1, :])
        flat = lab.ravel()
        flat[:] = flat[flat]  # jump to the label's own label
        if np.array_equal(lab, old):
            break
    lab[~valid] = -1
    return lab


def regions(cls: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Region index per pixel (-1 = none), size per region, neighbour pairs (both ways)."""
    lab = label_regions(cls)
    valid = lab >= 0
    _, inverse = np.unique(lab[valid], return_inverse=True)
    region = np.full(lab.shape, -1, np.int64)
    region[valid] = inverse
    size = np.bincount(inverse)
    pairs = []
    for a, b in ((region[:, :-1], region[:, 1:]), (region[:-1, :], region[1:, :])):
        m = (a >= 0) & (b >= 0) & (a != b)
        pairs.append(np.column_stack((a[m], b[m])))
    p = np.unique(np.concatenate(pairs), axis=0)
    return region, size, np.concatenate([p, p[:, ::-1]])


def small_left(cls: np.ndarray, threshold: int) -> int:
    """Regions below ``threshold`` pixels that have a valid neighbour."""
    _, size, pairs = regions(cls)
    has_neighbour = np.zeros(size.size, bool)
    has_neighbour[pairs[:, 0]] = True
    return int(((size < threshold) & has_neighbour).sum())


def explain(cls: np.ndarray, ours: np.ndarray, gdal: np.ndarray, threshold: int) -> dict:
    """Pixels where ``ours`` (smallest-first) and ``gdal`` differ, by the reason (above)."""
    region, size, p = regions(cls)
    valid = region >= 0
    n = size.size
    klass = np.zeros(n, np.int64)
    klass[region[valid]] = cls[valid]
    ours_r = np.zeros(n, np.int64)
    ours_r[region[valid]] = ours[valid]
    gdal_r = np.zeros(n, np.int64)
    gdal_r[region[valid]] = gdal[valid]
    nb_size = size[p[:, 1]]
    biggest = np.zeros(n, np.int64)
    np.maximum.at(biggest, p[:, 0], nb_size)
    top = nb_size == biggest[p[:, 0]]
    top_classes = np.unique(np.column_stack((p[top, 0], klass[p[top, 1]])), axis=0)
    tie = np.bincount(top_classes[:, 0], minlength=n) > 1

    differs = ours_r != gdal_r
    reason = np.full(n, "", dtype=object)
    reason[differs & (gdal_r == klass)] = "gdal kept"
    reason[differs & (ours_r == klass)] = "geoddu kept"
    moved = differs & (gdal_r != klass) & (ours_r != klass)
    reason[moved & tie] = "tie"
    reason[moved & ~tie & (biggest < threshold)] = "chain"
    reason[moved & ~tie & (biggest >= threshold)] = "neighbour grew"
    out = {name: (int((reason == name).sum()), int(size[reason == name].sum())) for name in REASONS}
    out["regions"] = n
    out["small regions"] = int((size < threshold).sum())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument(
        "--regions",
        type=int,
        default=0,
        help="A map of random cells with about this many regions; 0: wavy ~64 px blocks "
        "with --noise random pixels (like a model's output).",
    )
    ap.add_argument("--noise", type=float, default=0.05)
    ap.add_argument("--threshold", type=int, default=10, help="T in pixels (1 m pixels)")
    ap.add_argument("--window-size", type=int, default=512)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", nargs=2, metavar=("METHOD", "SRC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-sieve-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.one:  # a child: one sieve, its figures as JSON on stdout
        method, src = args.one
        out = work / f"{method}.npy"
        print(json.dumps(run_sieve(method, src, args.threshold, args.window_size, out)))
        return

    if args.regions:
        src = work / f"classes_{args.size}_{args.regions}r.tif"
        make_class_map(src, args.size, regions=args.regions)
        what = f"random cells, ~{args.regions} regions"
    else:
        src = work / f"classes_{args.size}_noise{args.noise:g}.tif"
        make_class_map(src, args.size, noise=args.noise)
        what = f"wavy blocks, {100 * args.noise:g} % random pixels"
    figures = {}
    for method in ("gdal", "smallest-first"):
        cmd = [sys.executable, __file__, "--one", method, str(src), "--workdir", str(work),
               "--threshold", str(args.threshold), "--window-size", str(args.window_size)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{method} failed:\n{done.stderr[-2000:]}")
        figures[method] = json.loads(done.stdout.strip().splitlines()[-1])
    with rasterio.open(src) as ds:
        cls = ds.read(1)
    valid = cls != NONE
    t = time.perf_counter()
    array = rasterio.features.sieve(cls, args.threshold, mask=valid, connectivity=4)
    t_array = time.perf_counter() - t
    sieved = {m: np.load(work / f"{m}.npy") for m in figures}

    n_valid = int(valid.sum())
    print(f"{args.size}^2 map ({what}), T = {args.threshold} px, 4-connectivity, "
          f"windows {args.window_size}^2")
    print("| sieve | seconds | CPU seconds | peak RSS (MB) | pixels changed | small regions left |")
    print("|---|---|---|---|---|---|")
    for method, f in figures.items():
        print(f"| {method} | {f['seconds']:.2f} | {f['cpu_seconds']:.2f} | "
              f"{f['peak_rss_mb']:.0f} | {int((sieved[method] != cls).sum())} | "
              f"{small_left(sieved[method], args.threshold)} |")
    print(f"| GDAL on the array in memory | {t_array:.2f} | | | {int((array != cls).sum())} | "
          f"{small_left(array, args.threshold)} |")
    print(f"scratch disk of gdal: {2 * cls.size / 2**20:.1f} MB (one byte per pixel, twice)")
    differ = int((sieved["gdal"] != array).sum())
    print(f"gdal against GDAL on the array: {differ} pixels differ")
    diff = sieved["smallest-first"] != array
    print(
        f"smallest-first against GDAL: {int(diff.sum())} pixels differ "
        f"({100 * diff.sum() / n_valid:.2f} % of valid); in nodata: {int((diff & ~valid).sum())}"
    )
    why = explain(cls, sieved["smallest-first"], array, args.threshold)
    print(f"{why.pop('regions')} regions, {why.pop('small regions')} below T")
    print("| reason | regions | pixels |")
    print("|---|---|---|")
    for name, (count, pixels) in why.items():
        print(f"| {name} | {count} | {pixels} |")


if __name__ == "__main__":
    main()
