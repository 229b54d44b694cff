"""A stratified random sample of points from a class map, for accuracy assessment.

The strata are the map classes (Olofsson et al. 2014, Remote Sensing of Environment 148,
Section 5): :func:`draw_sample` counts the valid pixels of every class, allocates the points
(:mod:`.allocation`), and draws that many distinct pixels of each class at random;
:func:`sample` writes them as a point layer (pixel centres, in the map's CRS) for people to
label in QGIS. ``geoddu sample`` and the QGIS algorithm are fronts over these two functions.

Memory does not grow with the map, only with the sample: the map is read twice, window by
window in one fixed order. Pass 1 counts pixels per class. Then, for each class c, k_c distinct
ranks in [0, N_c) are drawn up front and sorted: "the r-th pixel of class c in reading order".
Pass 2 walks the windows in the same order, keeping how many pixels of each class it has
passed, and picks the pixels whose ranks fall in the window. It stops as soon as every rank is
found.

Reproducible: the ranks of class c come from numpy's PCG64 generator seeded with (seed, c),
and everything else (allocation, reading order) is integer arithmetic, so the same map, options
and seed give the same points on any machine (with the same numpy major version: numpy keeps
``Generator.integers``' stream stable); a class's points do not change when another class's
allocation does. The reading order, and so the pixel a rank names, depends on ``window_size``:
the fronts keep it at :data:`DEFAULT_WINDOW`.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.atomic import AtomicOutput, os_error_line
from geoddu.io.writer import CLASS_NODATA
from geoddu.resources import release_free_memory
from geoddu.vectorize.class_windows import CancelFn, ClassReader, ProgressFn, window_grid
from geoddu.vectorize.writers import driver_for

from .allocation import allocate, cochran_sample_size, resolve_expected_ua
from .map_info import pam_category_names

__all__ = ["SampleDraw", "SampleResult", "Stratum", "draw_sample", "sample"]

DEFAULT_WINDOW = 1024
# The point layer's fields, in order (geometry aside). `reference` stays empty (NULL): people
# fill it in QGIS with the class they see, and `geoddu assess` compares it with `map_class`.
FIELDS = ("point_id", "map_class", "map_class_name", "stratum_pixels", "stratum_weight",
          "row", "col", "reference")
# A shapefile's field names have at most 10 characters; GDAL would cut them with a warning
# ("map_class_", "stratum_pi"): these are chosen instead, and documented.
SHAPEFILE_FIELDS = {"map_class_name": "class_name", "stratum_pixels": "stratum_px",
                    "stratum_weight": "stratum_w"}


@dataclass
class Stratum:
    """One map class as a stratum: its pixels, area, weight W_i and allocated points."""

    class_id: int
    name: str
    pixels: int
    weight: float  # W_i: pixels of the class / all valid pixels
    area_ha: float | None  # None where the CRS is not projected (degrees: no fixed area)
    points: int
    expected_ua: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "name": self.name, "pixels": self.pixels,
                "weight": self.weight, "area_ha": self.area_ha, "points": self.points,
                "expected_ua": self.expected_ua}


@dataclass
class SampleDraw:
    """The drawn points (pixel rows and columns, map coordinates of their centres) and the
    strata, before anything is written."""

    strata: list[Stratum]
    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray
    x: np.ndarray
    y: np.ndarray
    crs_wkt: str
    seed: int
    n_requested: int  # --n, or what Cochran's formula gave
    design: str  # "n" or "olofsson"
    target_se: float | None = None
    windows: int = 0
    windows_read: int = 0  # pass 2 stops once every point is found


@dataclass
class SampleResult:
    """What :func:`sample` wrote."""

    output: Path
    driver: str
    draw: SampleDraw
    seconds: float = 0.0
    strata: list[Stratum] = field(init=False)

    def __post_init__(self) -> None:
        self.strata = self.draw.strata

    @property
    def points(self) -> int:
        return int(self.draw.rows.size)

    def summary(self) -> str:
        d = self.draw
        how = (f"Olofsson allocation for SE(OA) {d.target_se:g} -> n = {d.n_requested}"
               if d.design == "olofsson" else f"n = {d.n_requested}")
        return (f"{self.output}: {self.points} points in {len(self.strata)} strata ({how}, "
                f"seed {d.seed}); {self.seconds:.1f} s")

    def to_dict(self) -> dict[str, Any]:
        d = self.draw
        return {"output": str(self.output), "driver": self.driver, "crs": d.crs_wkt,
                "points": self.points, "seed": d.seed, "design": d.design,
                "n_requested": d.n_requested, "target_se": d.target_se,
                "strata": [s.to_dict() for s in self.strata], "windows": d.windows,
                "seconds": round(self.seconds, 3)}


# -- the map ---------------------------------------------------------------------------------
def _map_names(reader: ClassReader, src: str) -> dict[int, str]:
    names = reader.names or pam_category_names(src) or []
    return {i: n for i, n in enumerate(names) if n and i < CLASS_NODATA}


def _pixel_area_ha(transform: Any, crs: Any) -> float | None:
    """Hectares per pixel, from the transform; None where the CRS is not projected."""
    if crs is None or not crs.is_projected:
        return None
    try:
        metres = float(crs.linear_units_factor[1])
    except Exception:  # noqa: BLE001 - rasterio raises CRSError for unknown units
        return None
    return abs(transform.a * transform.e - transform.b * transform.d) * metres**2 / 10_000


def _open(src: str) -> tuple[ClassReader, Any, Any]:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(src) as ds:
            crs, transform = ds.crs, ds.transform
    except RasterioError as exc:
        raise GeodduError(f"{src}: cannot open: {str(exc).strip().splitlines()[0]}") from exc
    if crs is None:
        raise GeodduError(f"{src}: has no CRS; sample points need one")
    return ClassReader(src), crs, transform


def _windows(reader: ClassReader, size: int):
    """The windows in the one fixed order both passes use (rows of windows, left to right),
    reopening the map after each row of windows so GDAL's cache never holds more than a row.

    After each row the freed heap goes back to the system: glibc serves the next window's
    arrays from the heap once large ones were freed (its mmap threshold rises), and the holes
    stayed resident: 16384^2 took 50 MB more than 4096^2 before (benchmarks/sample_memory.py).
    """
    src = reader.source
    grid = window_grid(src.height, src.width, size)
    # Where whole blocks tile the windows (a tiled map, e.g. 512^2 tiles and 1024^2 windows),
    # no block is shared by two windows: reopen after every window, and GDAL holds no more
    # than one window's blocks, not a row's (a row grows with the map's width).
    bh, bw = src.block_shape
    alone = size % bh == 0 and size % bw == 0
    for i, (r0, c0, h, w) in enumerate(grid):
        if i and (alone or c0 == 0):
            reader.next_row()
        if i and c0 == 0:
            release_free_memory()
        yield i, len(grid), r0, c0, reader.read(r0, c0, h, w)


# -- the draw --------------------------------------------------------------------------------
def _distinct_ranks(rng: np.random.Generator, population: int, k: int) -> np.ndarray:
    """k distinct integers in [0, population), sorted, uniformly among all k-subsets, in memory
    O(k) whatever the population (numpy's choice() permutes the whole population for large k)."""
    if k >= population:
        return np.arange(population, dtype=np.int64)
    if k > population // 2:
        # Few left out: draw those instead (population < 2k, so still O(k)).
        out = np.ones(population, dtype=bool)
        out[_distinct_ranks(rng, population, population - k)] = False
        return np.flatnonzero(out).astype(np.int64)
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < k:
        draw = rng.integers(0, population, size=k - chosen.size, dtype=np.int64)
        chosen = np.unique(np.concatenate([chosen, draw]))
    return chosen


def _check_cancel(cancel: CancelFn | None) -> None:
    if cancel is not None and cancel():
        raise Cancelled("sample cancelled; nothing was written")


def draw_sample(
    src: str | os.PathLike[str],
    *,
    n: int | None = None,
    min_per_class: int = 0,
    expected_ua: float | Mapping[int | str, float] | None = None,
    target_se: float | None = None,
    seed: int | None = None,
    window_size: int = DEFAULT_WINDOW,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SampleDraw:
    """Draw a stratified random sample (strata = map classes) from the class map ``src``.

    Size: ``n`` points in total, or, with ``expected_ua`` (one value, or {class id or name:
    value} with an optional ``"*"`` default), Cochran's n for the standard error ``target_se``
    of the overall accuracy (default 0.01; :mod:`.allocation`). Then at least
    ``min_per_class`` points per class (:func:`.allocation.allocate`). ``seed``: the same seed
    gives the same points; None draws one (kept in the result). ``window_size`` sets memory
    (its square) and the reading order: the same seed with another window size gives other
    points, so keep the default to reproduce a sample. ``progress(stage, done,
    total)`` is called per window of each pass ("count", then "pick"); ``cancel()`` returning
    True stops with :class:`~geoddu.Cancelled`.
    """
    src = os.fspath(src)
    if (n is None) == (expected_ua is None):
        raise GeodduError("give either a sample size n or expected user's accuracies "
                          "(Olofsson's allocation), not both")
    if n is not None and n < 1:
        raise GeodduError(f"the sample size must be at least 1, not {n}")
    if min_per_class < 0:
        raise GeodduError(f"the minimum per class cannot be negative ({min_per_class})")
    if target_se is not None and expected_ua is None:
        raise GeodduError("a target standard error needs expected user's accuracies")
    if target_se is None and expected_ua is not None:
        target_se = 0.01
    if target_se is not None and not 0 < target_se < 1:
        raise GeodduError(f"the target standard error must be between 0 and 1, not {target_se}")
    if window_size < 16:
        raise GeodduError(f"the window size must be at least 16 pixels, not {window_size}")
    if seed is None:
        seed = secrets.randbelow(2**31)
    elif seed < 0:
        raise GeodduError(f"the seed must be a non-negative integer, not {seed}")

    reader, crs, transform = _open(src)
    try:
        # Pass 1: pixels per class.
        counts = np.zeros(CLASS_NODATA + 1, dtype=np.int64)
        windows = 0
        for i, total, _r0, _c0, win in _windows(reader, window_size):
            _check_cancel(cancel)
            counts += np.bincount(win.ravel(), minlength=CLASS_NODATA + 1)
            windows = total
            if progress is not None:
                progress("count", i + 1, total)
        names = _map_names(reader, src)
        present = {int(c): int(counts[c]) for c in np.flatnonzero(counts[:CLASS_NODATA])}
        if not present:
            raise GeodduError(f"{src}: has no valid pixel (all nodata); nothing to sample")
        valid = sum(present.values())
        weights = {c: v / valid for c, v in present.items()}

        ua = None
        if expected_ua is not None:
            ua = resolve_expected_ua(expected_ua, sorted(present), names, src)
            n = cochran_sample_size(weights, ua, target_se)
            design = "olofsson"
        else:
            design = "n"
        assert n is not None
        points = allocate(present, n, min_per_class)

        ranks = {c: _distinct_ranks(np.random.default_rng([seed, c]), present[c], k)
                 for c, k in points.items() if k > 0}

        # Pass 2: the pixels with those ranks, in the same order.
        seen = np.zeros(CLASS_NODATA + 1, dtype=np.int64)
        next_rank = dict.fromkeys(ranks, 0)
        rows, cols, classes = [], [], []
        pending = {c for c in ranks if ranks[c].size}
        windows_read = 0
        for i, total, r0, c0, win in _windows(reader, window_size) if pending else ():
            _check_cancel(cancel)
            windows_read += 1
            flat = win.ravel()
            here = np.bincount(flat, minlength=CLASS_NODATA + 1)
            for c in sorted(pending):
                if not here[c]:
                    continue
                r = ranks[c]
                lo = next_rank[c]
                hi = int(np.searchsorted(r, seen[c] + here[c], side="left"))
                if hi > lo:
                    pos = np.flatnonzero(flat == c)[r[lo:hi] - seen[c]]
                    rows.append(r0 + pos // win.shape[1])
                    cols.append(c0 + pos % win.shape[1])
                    classes.append(np.full(pos.size, c, dtype=np.int32))
                    next_rank[c] = hi
                if hi == r.size:
                    pending.discard(c)
            seen += here
            if progress is not None:
                progress("pick", i + 1, total)
            if not pending:
                if progress is not None and i + 1 < total:
                    progress("pick", total, total)  # the rest holds no sampled pixel
                break
    finally:
        reader.close()

    def cat(parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.empty(0, dtype)

    rows_a, cols_a, cls_a = cat(rows, np.int64), cat(cols, np.int64), cat(classes, np.int32)
    # Sorted by class, then reading order: point ids group a class's points together.
    order = np.lexsort((cols_a, rows_a, cls_a))
    rows_a, cols_a, cls_a = rows_a[order], cols_a[order], cls_a[order]
    # Pixel centres: the transform applied to (col + 0.5, row + 0.5).
    t = transform
    x = t.a * (cols_a + 0.5) + t.b * (rows_a + 0.5) + t.c
    y = t.d * (cols_a + 0.5) + t.e * (rows_a + 0.5) + t.f
    ha = _pixel_area_ha(transform, crs)
    strata = [
        Stratum(class_id=c, name=names.get(c, f"class {c}"), pixels=present[c],
                weight=weights[c], area_ha=None if ha is None else present[c] * ha,
                points=points[c], expected_ua=None if ua is None else ua[c])
        for c in sorted(present)
    ]
    return SampleDraw(strata=strata, rows=rows_a, cols=cols_a, classes=cls_a, x=x, y=y,
                      crs_wkt=crs.to_wkt(), seed=int(seed), n_requested=int(n), design=design,
                      target_se=target_se if design == "olofsson" else None, windows=windows,
                      windows_read=windows_read)


# -- the layer -------------------------------------------------------------------------------
def _shapefile_parts(path: Path) -> list[Path]:
    return [path.with_suffix(ext) for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix")]


class _PointsOutput:
    """The point layer written into a private folder beside the destination and renamed into
    place when complete (:class:`~geoddu.io.atomic.AtomicOutput`): a failure leaves nothing.
    Made before any reading, so a bad output path fails at once."""

    def __init__(self, dst: Path, overwrite: bool) -> None:
        self.dst = dst
        self.driver = driver_for(dst)
        self.shapefile = self.driver == "ESRI Shapefile"
        self.out = AtomicOutput(dst, overwrite=overwrite)
        if self.shapefile and not overwrite:
            existing = [p for p in _shapefile_parts(dst) if p.exists()]
            if existing:
                self.out.discard()
                raise GeodduError(f"{existing[0]} exists; pass --overwrite to replace it")
        self.folder: Path | None = None

    def write(self, draw: SampleDraw, strata: list[Stratum]) -> None:
        import pyogrio.raw
        import shapely

        from geoddu.io.vector import pyogrio_path

        by_class = {s.class_id: s for s in strata}
        cls = draw.classes
        count = cls.size
        names = np.array([by_class[int(c)].name for c in cls], dtype=object)
        pixels = np.array([by_class[int(c)].pixels for c in cls], dtype=np.int64)
        weight = np.array([by_class[int(c)].weight for c in cls], dtype=np.float64)
        reference = np.full(count, None, dtype=object)
        values = [np.arange(1, count + 1, dtype=np.int32), cls.astype(np.int32), names, pixels,
                  weight, draw.rows, draw.cols, reference]
        wkb = shapely.to_wkb(shapely.points(draw.x, draw.y))
        self.folder = self.out.scratch()
        try:
            self.folder.mkdir()
        except OSError as exc:
            raise GeodduError(os_error_line(exc, str(self.dst))) from exc
        # A plain name inside: pyogrio reads ';', '?' and '#' in a path as URL syntax.
        target = self.folder / f"out{self.dst.suffix}"
        layer = {} if self.shapefile else {
            "layer": re.sub(r"^[^A-Za-z0-9_]+", "", self.dst.stem) or "samples"}
        try:
            with pyogrio_path(target) as safe:
                fields = [SHAPEFILE_FIELDS.get(f, f) if self.shapefile else f for f in FIELDS]
                # FlatGeobuf's spatial index would reorder the features (Hilbert order):
                # without it they stay in point_id order, and a sample is small.
                options = {"SPATIAL_INDEX": "NO"} if self.driver == "FlatGeobuf" else None
                pyogrio.raw.write(safe, wkb, values, fields, driver=self.driver,
                                  geometry_type="Point", crs=draw.crs_wkt,
                                  encoding="UTF-8" if self.shapefile else None,
                                  layer_options=options, **layer)
        except GeodduError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many types
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise GeodduError(f"{self.dst}: cannot write {self.driver}: {msg}") from exc
        if self.shapefile:
            # Companions first, the .shp last (with the commit): a .shp that is there always
            # has its companions.
            for part in _shapefile_parts(self.dst)[1:]:
                made = target.with_suffix(part.suffix)
                if made.exists():
                    os.replace(made, part)
                elif part.exists():
                    part.unlink()
        os.replace(target, self.out.temp)
        shutil.rmtree(self.folder, ignore_errors=True)
        self.out.commit()

    def discard(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.out.discard()


def sample(
    src: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    n: int | None = None,
    min_per_class: int = 0,
    expected_ua: float | Mapping[int | str, float] | None = None,
    target_se: float | None = None,
    seed: int | None = None,
    overwrite: bool = False,
    window_size: int = DEFAULT_WINDOW,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SampleResult:
    """Draw a stratified random sample from the class map ``src`` (:func:`draw_sample`, same
    options) and write it to ``output`` as a point layer: the format by extension (.gpkg,
    .geojson/.json, .fgb, .shp), the map's CRS, one point per sampled pixel at its centre with
    the fields point_id, map_class, map_class_name, stratum_pixels, stratum_weight, row, col
    and an empty ``reference`` (string) to fill in. Written atomically: a failed or cancelled
    run leaves nothing at ``output``."""
    started = time.perf_counter()
    dst = Path(os.fspath(output))
    if os.path.realpath(dst) == os.path.realpath(os.fspath(src)):
        raise GeodduError(f"the output {dst} is the map; writing it would destroy the input")
    out = _PointsOutput(dst, overwrite)
    try:
        draw = draw_sample(src, n=n, min_per_class=min_per_class, expected_ua=expected_ua,
                           target_se=target_se, seed=seed, window_size=window_size,
                           progress=progress, cancel=cancel)
        if progress is not None:
            progress("write_points", 0, 1)
        try:
            out.write(draw, draw.strata)
        except OSError as exc:  # only here: an OSError while reading the map is rasterio's
            raise GeodduError(os_error_line(exc, str(dst))) from exc
        if progress is not None:
            progress("write_points", 1, 1)
    except BaseException:
        out.discard()
        raise
    return SampleResult(output=dst, driver=out.driver, draw=draw,
                        seconds=time.perf_counter() - started)
