"""geoddu's exact sieve (``vectorize --min-area --sieve exact``) against GDAL's
(``rasterio.features.sieve``, which is ``GDALSieveFilter``; ``vectorize``'s default, run from
scratch files as ``geoddu.vectorize.gdal_sieve`` does) on the same class map: how long each
takes, how many small regions each leaves, how many pixels differ, and why.

Both use 4-connectivity, the same threshold T (pixels; a region of fewer than T pixels is
removed) and the same nodata (255, never a neighbour, never changed). geoddu's sieved raster is
what ``vectorize`` polygonises: pass 1 (``measure_regions``) window by window, then the plan
applied to every window. Every region of the map with pixels that differ is put in one of these
classes, by what the two rules do with it:

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

Each side is timed in this one process (the map is read once into memory for GDAL; geoddu reads
it window by window), so the times are indicative only.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features

sys.path.insert(0, str(Path(__file__).parent))
from vectorize_scaling import make_class_map  # noqa: E402

from geoddu.vectorize.class_windows import NONE, ClassReader, window_grid  # noqa: E402
from geoddu.vectorize.exact_sieve import measure_regions  # noqa: E402
from geoddu.vectorize.gdal_sieve import gdal_sieve  # noqa: E402


def geoddu_sieve(src: str, threshold: int, window: int) -> np.ndarray:
    reader = ClassReader(src)
    try:
        width, height = reader.source.width, reader.source.height
        windows = window_grid(height, width, window)
        plan = measure_regions(reader, windows, width, height, threshold, lambda *a: None, None)
        out = np.empty((height, width), np.uint8)
        for index, (r0, c0, h, w) in enumerate(windows):
            if index and c0 == 0:
                reader.next_row()
            cls = reader.read(r0, c0, h, w)
            out[r0 : r0 + h, c0 : c0 + w] = cls if plan is None else plan.apply(index, cls)
        return out
    finally:
        reader.close()


def default_sieve(src: str, threshold: int, window: int, folder: Path) -> np.ndarray:
    """What `vectorize` does by default: GDAL's sieve from scratch files (gdal_sieve)."""
    reader = ClassReader(src)
    try:
        width, height = reader.source.width, reader.source.height
        windows = window_grid(height, width, window)
        sieved = gdal_sieve(reader, windows, threshold, folder, lambda *a: None, None)
        return np.fromfile(sieved.path, np.uint8).reshape(height, width)
    finally:
        reader.close()


def small_left(cls: np.ndarray, threshold: int) -> tuple[int, int]:
    """(regions, pixels) still below `threshold` that have a valid neighbour."""
    lab = label_regions(cls)
    valid = lab >= 0
    ids, inverse = np.unique(lab[valid], return_inverse=True)
    region = np.full(lab.shape, -1, np.int64)
    region[valid] = inverse
    size = np.bincount(inverse, minlength=ids.size)
    touches = np.zeros(ids.size, bool)
    for a, b in ((region[:, :-1], region[:, 1:]), (region[:-1, :], region[1:, :])):
        m = (a >= 0) & (b >= 0) & (a != b)
        touches[a[m]] = touches[b[m]] = True
    small = (size < threshold) & touches
    return int(small.sum()), int(size[small].sum())


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


def explain(cls: np.ndarray, ours: np.ndarray, gdal: np.ndarray, threshold: int) -> dict:
    """Pixels that differ, by the reason (see the module docstring)."""
    lab = label_regions(cls)
    valid = lab >= 0
    ids, inverse = np.unique(lab[valid], return_inverse=True)
    region = np.full(lab.shape, -1, np.int64)
    region[valid] = inverse
    n = ids.size
    size = np.bincount(region[valid], minlength=n)
    klass = np.zeros(n, np.int64)
    klass[region[valid]] = cls[valid]
    ours_r = np.zeros(n, np.int64)
    ours_r[region[valid]] = ours[valid]
    gdal_r = np.zeros(n, np.int64)
    gdal_r[region[valid]] = gdal[valid]

    # Neighbour pairs of different regions (both valid), both directions.
    pairs = []
    for a, b in ((region[:, :-1], region[:, 1:]), (region[:-1, :], region[1:, :])):
        m = (a >= 0) & (b >= 0) & (a != b)
        pairs.append(np.column_stack((a[m], b[m])))
    p = np.unique(np.concatenate(pairs), axis=0)
    p = np.concatenate([p, p[:, ::-1]])
    nb_size = size[p[:, 1]]
    biggest = np.zeros(n, np.int64)
    np.maximum.at(biggest, p[:, 0], nb_size)
    top = nb_size == biggest[p[:, 0]]
    top_classes = np.unique(np.column_stack((p[top, 0], klass[p[top, 1]])), axis=0)
    tie = np.bincount(top_classes[:, 0], minlength=n) > 1

    differs = ours_r != gdal_r
    small = size < threshold
    reason = np.full(n, "", dtype=object)
    reason[differs & (gdal_r == klass)] = "gdal kept"
    reason[differs & (ours_r == klass)] = "geoddu kept"
    moved = differs & (gdal_r != klass) & (ours_r != klass)
    reason[moved & tie] = "tie"
    reason[moved & ~tie & (biggest < threshold)] = "chain"
    reason[moved & ~tie & (biggest >= threshold)] = "neighbour grew"
    out = {}
    for name in ("gdal kept", "geoddu kept", "tie", "chain", "neighbour grew"):
        sel = reason == name
        out[name] = (int(sel.sum()), int(size[sel].sum()))
    out["regions"] = n
    out["small regions"] = int(small.sum())
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
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-sieve-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.regions:
        src = work / f"classes_{args.size}_{args.regions}r.tif"
        make_class_map(src, args.size, regions=args.regions)
        what = f"random cells, ~{args.regions} regions"
    else:
        src = work / f"classes_{args.size}_noise{args.noise:g}.tif"
        make_class_map(src, args.size, noise=args.noise)
        what = f"wavy blocks, {100 * args.noise:g} % random pixels"
    with rasterio.open(src) as ds:
        cls = ds.read(1)
    valid = cls != NONE

    t = time.perf_counter()
    ours = geoddu_sieve(str(src), args.threshold, args.window_size)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    gdal = rasterio.features.sieve(cls, args.threshold, mask=valid, connectivity=4)
    t_gdal = time.perf_counter() - t
    scratch = work / "scratch"
    scratch.mkdir(exist_ok=True)
    t = time.perf_counter()
    default = default_sieve(str(src), args.threshold, args.window_size, scratch)
    t_default = time.perf_counter() - t
    if not np.array_equal(default, gdal):
        raise SystemExit("geoddu's default sieve differs from GDAL's on the array")

    diff = ours != gdal
    print(f"{args.size}^2 map ({what}), T = {args.threshold} px, 4-connectivity")
    print(
        f"geoddu exact sieve (windows {args.window_size}^2, from the file): {t_ours:.1f} s; "
        f"GDAL sieve (the array in memory): {t_gdal:.1f} s; "
        f"vectorize's default (GDAL's, from scratch files): {t_default:.1f} s, identical"
    )
    for name, out in (("exact", ours), ("GDAL", gdal)):
        regions, pixels = small_left(out, args.threshold)
        print(f"left below T with a neighbour after the {name} sieve: {regions} regions, "
              f"{pixels} px")
    n_valid = int(valid.sum())
    print(
        f"pixels changed: geoddu {int((ours != cls).sum())}, GDAL {int((gdal != cls).sum())} "
        f"of {n_valid} valid"
    )
    print(
        f"pixels that differ: {int(diff.sum())} ({100 * diff.sum() / n_valid:.2f} % of valid); "
        f"in nodata: {int((diff & ~valid).sum())}"
    )
    why = explain(cls, ours, gdal, args.threshold)
    print(f"{why.pop('regions')} regions, {why.pop('small regions')} below T")
    print("| reason | regions | pixels |")
    print("|---|---|---|")
    for name, (regions, pixels) in why.items():
        print(f"| {name} | {regions} | {pixels} |")


if __name__ == "__main__":
    main()
