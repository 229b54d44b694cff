"""Class map GeoTIFF -> one polygon layer, built window by window, without seams, written as
it goes.

How it works (details and guarantees in ``docs/vectorize.md``):

* **Sieve** (``min_area``) first, over the whole map: by default with GDAL's sieve
  (:mod:`geoddu.vectorize.sieve_gdal`: the map staged into a scratch file, sieved by
  ``GDALSieveFilter``, read back window by window); or, with ``sieve="smallest-first"``,
  geoddu's own rule (:mod:`geoddu.vectorize.sieve_smallest_first`: a first streaming pass
  measures every region, the merges are decided on the region graph and applied window by
  window). Neither depends on the window size.
* **Polygonise each window** with ``rasterio.features.shapes`` (4-connectivity), in *pixel*
  coordinates of the whole raster. Vertices are integers there, so the pieces of one region
  cut at a window border share their border vertex for vertex and their union is exact; the
  affine transform is applied to every vertex the same way.
* **Stitch** the pieces (:mod:`geoddu.vectorize.stitch`): a region inside one window is
  complete at once; the pieces of a region cut by window borders are joined in a union-find
  along the borders and merged with ``shapely.union_all`` once the region can no longer grow.
  Only the last pixel row of the previous window row and the last column of the previous
  window are kept, never pixel arrays.
* **Write as it goes**: complete regions are written in batches of ``batch_size`` polygons
  into the temporary output, so memory holds the open regions and one batch, not the layer.
* **Simplify** (``simplify``): vertices are added where a neighbour's edge ends (so edges match
  vertex for vertex, a valid GEOS coverage) and the whole layer goes through
  ``shapely.coverage_simplify``; shared edges are simplified once for both sides. This needs
  the whole coverage at once, so with ``simplify`` the layer is held until it is simplified.

Where each step lives: :mod:`geoddu.vectorize.class_windows` (reading),
:mod:`geoddu.vectorize.window_regions` (one window's regions), :mod:`geoddu.vectorize.seams`
and :mod:`geoddu.vectorize.stitch` (stitching), the two sieves,
:mod:`geoddu.vectorize.polygon_edges` (repair, edge matching, map coordinates) and
:mod:`geoddu.vectorize.writers` (the atomic, batched write). This module runs them in order.

The layer is written with pyogrio into a private temporary folder beside the destination and
renamed into place when complete (:class:`geoddu.io.atomic.AtomicOutput`); a failed run leaves
nothing, the sieve's scratch files included.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from affine import Affine

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.atomic import AtomicOutput
from geoddu.sizes import human_bytes
from geoddu.vectorize.class_windows import (
    NONE,
    CancelFn,
    ClassReader,
    ProgressFn,
    class_names_of,
    window_grid,
)
from geoddu.vectorize.memory_plan import (
    MemoryGuard,
    VectorizePlan,
    check_gdal_sieve,
    check_smallest_first,
    plan_vectorize,
)
from geoddu.vectorize.polygon_edges import match_edges, orient_polygons, repair, to_map
from geoddu.vectorize.sieve_gdal import SievedMap, gdal_sieve
from geoddu.vectorize.sieve_smallest_first import SievePlan, measure_regions
from geoddu.vectorize.stitch import RegionStitcher
from geoddu.vectorize.writers import DRIVERS, LayerWriter, driver_for, remove_vector

__all__ = [
    "DRIVERS",
    "SIEVES",
    "VectorizeResult",
    "class_names_of",
    "driver_for",
    "remove_vector",
    "vectorize",
]

# Pixels per window side. GDAL's polygonizer holds a window's polygons in an OGR memory layer
# (~400 bytes each): on a noisy map (~8 pixels per region) that is ~15 MB at 512 px, ~60 MB at
# 1024 px, and larger windows are no faster.
DEFAULT_WINDOW = 512
# Complete polygons written at a time: a few MB while being written (each is copied into map
# coordinates and WKB), and the file is reopened for appending only every this many polygons
# (~0.05 s per append).
DEFAULT_BATCH = 10_000
# The ways to sieve (``min_area``), the default first: GDAL's rule, or geoddu's own rule, which
# also merges groups of small regions (docs/vectorize.md compares them).
SIEVES = ("gdal", "smallest-first")


@dataclass
class VectorizeResult:
    """What :func:`vectorize` wrote: rows per class name, sieve threshold in pixels, timing."""

    output: Path
    driver: str
    crs: str
    polygons: int
    polygons_per_class: dict[str, int]
    windows: int
    window_size: int
    min_area_pixels: int | None = None
    sieve: str | None = None  # which sieve ran (SIEVES), None without min_area
    sieved_pixels: int = 0
    simplify: float | None = None
    seconds: float = 0.0
    classes: list[int] | None = field(default=None)
    batches: int = 0  # writes into the layer
    peak_held: int = 0  # most polygons held at once (waiting to be written, or open pieces)
    memory_limit: int | None = None  # bytes, as asked
    memory_estimate: int | None = None  # the fitted plan's estimate

    def summary(self) -> str:
        parts = [f"{self.output}: {self.polygons} polygons"]
        parts.append(f"{len(self.polygons_per_class)} classes")
        if self.min_area_pixels is not None:
            parts.append(
                f"sieved regions < {self.min_area_pixels} px ({self.sieve} sieve, "
                f"{self.sieved_pixels} px changed)"
            )
        if self.simplify is not None:
            parts.append(f"simplified at {self.simplify:g}")
        plural = "s" if self.windows != 1 else ""
        fitted = (f" (fitted to --memory-limit {human_bytes(self.memory_limit)})"
                  if self.memory_limit is not None else "")
        parts.append(f"{self.windows} window{plural} of {self.window_size} px{fitted}")
        return "; ".join(parts) + f"; {self.seconds:.1f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "driver": self.driver,
            "crs": self.crs,
            "polygons": self.polygons,
            "polygons_per_class": self.polygons_per_class,
            "windows": self.windows,
            "window_size": self.window_size,
            "min_area_pixels": self.min_area_pixels,
            "sieve": self.sieve,
            "sieved_pixels": self.sieved_pixels,
            "simplify": self.simplify,
            "classes": self.classes,
            "batches": self.batches,
            "peak_held": self.peak_held,
            "memory_limit": self.memory_limit,
            "memory_estimate": self.memory_estimate,
            "seconds": round(self.seconds, 3),
        }


def _name(names: list[str] | None, class_id: int) -> str:
    if names is not None and class_id < len(names):
        return names[class_id]
    return f"class {class_id}"


# --- the public function ---------------------------------------------------------------------


def vectorize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    min_area: float | None = None,
    sieve: str = SIEVES[0],
    simplify: float | None = None,
    classes: Sequence[int] | None = None,
    window_size: int = DEFAULT_WINDOW,
    batch_size: int = DEFAULT_BATCH,
    overwrite: bool = False,
    memory_limit: int | str | None = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> VectorizeResult:
    """Polygonise the class map ``src`` into the vector file ``dst`` (format by extension).

    One polygon per 4-connected region, with columns ``class_id`` and ``class_name`` (from the
    raster's ``CLASS_NAMES`` tag), in the raster's CRS. Nodata makes no polygon.

    ``min_area`` (square map units): regions smaller than this are first merged into their
    largest neighbour (a sieve over the whole map). ``sieve``: ``"gdal"`` (GDAL's
    ``GDALSieveFilter``: each small region takes the class of its largest neighbour, sizes
    before any merge) or ``"smallest-first"`` (geoddu's rule: smallest region first, sizes as
    they are then, until no region with a neighbour is small). ``simplify`` (map
    units): topology-preserving simplification of the edges shared by neighbouring polygons;
    the layer's outline (raster edge, nodata) is kept. ``classes``: class ids to write (the
    others are still used for sieving and simplification). ``window_size``: pixels per window
    side; memory grows with its square. ``batch_size``: complete polygons are written as soon
    as this many are waiting (without ``simplify``, which needs the whole layer at once).
    ``memory_limit`` (bytes, or "1G", "800M"): windows and batches are made small enough
    for the run's estimate to fit (:mod:`geoddu.vectorize.memory_plan`), or the run is
    refused before any work; what the map's content makes grow (open regions, sieve tables,
    ``simplify``'s layer) is watched after every window and stops the run past the limit.
    ``progress(stage, done, total)`` is called after each window; ``cancel()`` returning True
    stops the run with :class:`~geoddu.Cancelled`.
    Raises :class:`~geoddu.GeodduError` for user errors; nothing is written then.
    """
    started = time.perf_counter()
    src = os.fspath(src)
    dst_path = Path(os.fspath(dst))
    driver = driver_for(dst_path)
    if window_size < 2:
        raise GeodduError(f"window size must be at least 2 pixels, got {window_size}")
    if batch_size < 1:
        raise GeodduError(f"batch size must be at least 1 polygon, got {batch_size}")
    if min_area is not None and not (min_area > 0 and math.isfinite(min_area)):
        raise GeodduError(f"--min-area must be a positive area, got {min_area}")
    if sieve not in SIEVES:
        raise GeodduError(f"--sieve must be one of {', '.join(SIEVES)}, got {sieve!r}")
    if simplify is not None and not (simplify > 0 and math.isfinite(simplify)):
        raise GeodduError(f"--simplify must be a positive distance, got {simplify}")
    if simplify is not None and not hasattr(shapely, "coverage_simplify"):
        raise GeodduError(
            f"--simplify needs shapely >= 2.1 (coverage_simplify); this is {shapely.__version__}"
        )
    # Fail on an existing output before doing the work, not after.
    AtomicOutput(dst_path, overwrite=overwrite).discard()
    report: ProgressFn = progress or (lambda stage, done, total: None)

    reader = ClassReader(src)
    try:
        crs = reader.source.crs
        transform = reader.source.transform
        width, height = reader.source.width, reader.source.height
        names = reader.names
        selected: list[int] | None = None
        keep_lut: np.ndarray | None = None
        if classes is not None:
            selected = sorted({int(c) for c in classes})
            limit = len(names) if names is not None else NONE
            unknown = [c for c in selected if not 0 <= c < limit]
            if unknown:
                known = (
                    ", ".join(f"{i}={n}" for i, n in enumerate(names))
                    if names is not None
                    else f"0..{NONE - 1}"
                )
                raise GeodduError(
                    f"{src}: no class {', '.join(map(str, unknown))}; its classes are {known}"
                )
            keep_lut = np.full(256, NONE, np.uint8)
            keep_lut[selected] = selected

        threshold: int | None = None
        if min_area is not None:
            if crs.is_geographic:
                raise GeodduError(
                    f"{src}: --min-area is in square map units, but {crs.to_string()} is in "
                    "degrees; reproject the class map to a projected CRS first"
                )
            pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
            # A region of n pixels is removed when n * pixel_area < min_area; the tiny slack
            # keeps e.g. 400 m^2 on 20 m^2 pixels at 20 pixels despite rounding.
            threshold = max(1, math.ceil(min_area / pixel_area - 1e-9))

        plan: VectorizePlan | None = None
        if memory_limit is not None:
            plan = plan_vectorize(memory_limit, width=width,
                                  block_rows=reader.source.block_shape[0],
                                  itemsize=reader.source.dtype.itemsize,
                                  window_size=window_size, batch_size=batch_size,
                                  sieve=sieve if threshold is not None else None)
            window_size, batch_size = plan.window_size, plan.batch_size
            guard = MemoryGuard(plan, sieve if threshold is not None else None,
                                simplify is not None)
            report = _guarded(report, guard)
        windows = window_grid(height, width, window_size)
        with LayerWriter(dst_path, driver, overwrite, crs.to_wkt()) as writer:
            source, sieve_plan = _sieve(
                reader, sieve, threshold, windows, writer.folder, dst_path, report, cancel,
                memory=plan,
            )
            sink = _Sink(writer, transform, names, src, batch_size, hold=simplify is not None)
            # With --simplify every class is polygonised: shared edges with classes that are
            # not written still have to be simplified the same way on both sides.
            lut = None if simplify is not None else keep_lut
            try:
                _polygonize(source, sieve_plan, windows, lut, RegionStitcher(width, height),
                            sink, report, cancel)
            finally:
                source.close()
            if simplify is not None:
                report("simplify", 0, 1)
                sink.simplify(simplify, keep_lut)
                report("simplify", 1, 1)
            report("write", 0, 1)
            sink.flush()
            if writer.rows == 0:
                what = "of the selected classes " if selected is not None else ""
                raise GeodduError(
                    f"{src}: no valid pixels {what}to polygonise; nothing was written"
                )
            writer.commit()
            report("write", 1, 1)
    finally:
        reader.close()

    counts = sink.counts
    per_class = {_name(names, int(i)): int(counts[i]) for i in np.flatnonzero(counts)}
    return VectorizeResult(
        output=dst_path,
        driver=driver,
        crs=crs.to_string(),
        polygons=int(counts.sum()),
        polygons_per_class=per_class,
        windows=len(windows),
        window_size=window_size,
        min_area_pixels=threshold,
        sieve=sieve if threshold is not None else None,
        sieved_pixels=_sieved_pixels(source, sieve_plan),
        simplify=simplify,
        seconds=time.perf_counter() - started,
        classes=selected,
        batches=writer.batches,
        peak_held=sink.peak_held,
        memory_limit=plan.limit if plan is not None else None,
        memory_estimate=plan.estimate if plan is not None else None,
    )


def _sieve(
    reader: ClassReader,
    sieve: str,
    threshold: int | None,
    windows: list[tuple[int, int, int, int]],
    folder: Path,
    dst: Path,
    report: ProgressFn,
    cancel: CancelFn | None,
    memory: VectorizePlan | None = None,
) -> tuple[ClassReader | SievedMap, SievePlan | None]:
    """What the polygonising pass reads (the class map, or GDAL's sieved copy of it), and the
    plan of geoddu's own sieve where that one runs."""
    if threshold is None or threshold <= 1:
        return reader, None
    height, width = reader.source.height, reader.source.width
    if sieve == "smallest-first":
        fits = None if memory is None else (lambda n: check_smallest_first(memory, n))
        return reader, measure_regions(reader, windows, width, height, threshold, report, cancel,
                                       fits)
    if threshold > width * height:
        # No region can reach the threshold, so GDAL merges none (and rasterio refuses it).
        return reader, None
    fits = None if memory is None else (lambda n: check_gdal_sieve(memory, n))
    return gdal_sieve(reader, windows, threshold, folder, dst, report, cancel, fits), None


def _polygonize(
    source: ClassReader | SievedMap,
    plan: SievePlan | None,
    windows: list[tuple[int, int, int, int]],
    lut: np.ndarray | None,
    stitcher: RegionStitcher,
    sink: _Sink,
    report: ProgressFn,
    cancel: CancelFn | None,
) -> None:
    """The polygonising pass: every window, sieved, stitched; complete regions into ``sink``."""
    for index, (r0, c0, h, w) in enumerate(windows):
        if cancel is not None and cancel():
            raise Cancelled("vectorize cancelled; nothing was written")
        if index and c0 == 0:
            source.next_row()
        cls = source.read(r0, c0, h, w)
        if plan is not None:
            cls = plan.apply(index, cls)
        if lut is not None:
            cls = lut[cls]
        for geoms, ids in stitcher.window(r0, c0, cls):
            sink.add(geoms, ids, stitcher.pieces)
        del cls
        report("polygonize", index + 1, len(windows))
    source.close()
    for geoms, ids in stitcher.finish():
        sink.add(geoms, ids, stitcher.pieces)


def _guarded(report: ProgressFn, guard: MemoryGuard) -> ProgressFn:
    def checked(stage: str, done: int, total: int) -> None:
        guard.check(stage, done, total)
        report(stage, done, total)

    return checked


def _sieved_pixels(source: ClassReader | SievedMap, plan: SievePlan | None) -> int:
    if isinstance(source, SievedMap):
        return source.changed
    return plan.sieved_pixels if plan is not None else 0


class _Sink:
    """Complete regions (pixel coordinates) -> checked, map coordinates, into the layer writer
    in batches of ``batch_size``; or, with ``hold`` (``--simplify``), kept until
    :meth:`simplify` has seen the whole layer."""

    def __init__(
        self,
        writer: LayerWriter,
        transform: Affine,
        names: list[str] | None,
        src: str,
        batch_size: int,
        hold: bool,
    ) -> None:
        self.writer, self.transform, self.src = writer, transform, src
        self.batch_size, self.hold = batch_size, hold
        self.name_lut = np.array([_name(names, i) for i in range(256)], dtype=object)
        self.geoms: list[np.ndarray] = []
        self.cls: list[np.ndarray] = []
        self.waiting = 0
        self.counts = np.zeros(256, np.int64)
        self.peak_held = 0  # most polygons (and pieces of open regions) held at once

    def add(self, geoms: np.ndarray, cls: np.ndarray, open_pieces: int) -> None:
        if geoms.size == 0:
            return
        self.geoms.append(geoms)
        self.cls.append(cls)
        self.waiting += geoms.size
        self.peak_held = max(self.peak_held, self.waiting + open_pieces)
        if not self.hold and self.waiting >= self.batch_size:
            self.flush(whole_batches=True)

    def _take(self) -> tuple[np.ndarray, np.ndarray]:
        geoms = np.concatenate(self.geoms) if self.geoms else np.empty(0, dtype=object)
        cls = np.concatenate(self.cls) if self.cls else np.empty(0, np.uint8)
        self.geoms, self.cls, self.waiting = [], [], 0
        return geoms, cls

    def flush(self, whole_batches: bool = False) -> None:
        """Write the polygons waiting in batches of ``batch_size``: all of them, or only whole
        batches (the rest keeps waiting for more)."""
        geoms, cls = self._take()
        if whole_batches:
            keep = geoms.size % self.batch_size
            if keep:
                self.geoms, self.cls, self.waiting = [geoms[-keep:]], [cls[-keep:]], keep
                geoms, cls = geoms[:-keep], cls[:-keep]
        if not self.hold:
            geoms = to_map(repair(geoms, self.src), self.transform, orient=True)
        for start in range(0, geoms.size, self.batch_size):
            part = geoms[start : start + self.batch_size]
            ids = cls[start : start + self.batch_size]
            self.writer.write(part, ids, self.name_lut[ids])
            self.counts += np.bincount(ids, minlength=256)

    def simplify(self, tolerance: float, keep_lut: np.ndarray | None) -> None:
        """Simplify the whole layer at once (a coverage); keep only the selected classes."""
        geoms, cls = self._take()
        geoms = repair(geoms, self.src)
        # GEOS's result depends on the order of the polygons: sort them in raster order of the
        # regions (top to bottom, then left to right), not in the order windows completed them,
        # so that the layer does not depend on the window size.
        bounds = shapely.bounds(geoms)
        order = np.lexsort(
            (shapely.area(geoms), bounds[:, 2], bounds[:, 3], bounds[:, 0], bounds[:, 1])
        )
        geoms, cls = geoms[order], cls[order]
        if geoms.size:
            geoms = to_map(match_edges(geoms), self.transform)
            # simplify_boundary=False: the outline (raster edge, nodata) stays on the pixel
            # edges, so the layer still covers exactly the valid pixels.
            geoms = orient_polygons(
                shapely.coverage_simplify(geoms, tolerance, simplify_boundary=False)
            )
            if keep_lut is not None:
                keep = keep_lut[cls] != NONE
                geoms, cls = geoms[keep], cls[keep]
        self.geoms, self.cls, self.waiting = [geoms], [cls], geoms.size
