"""Class map GeoTIFF -> one polygon layer, built window by window, without seams.

How it works (details and guarantees in ``docs/vectorize.md``):

* **Polygonise each window** with ``rasterio.features.shapes`` (4-connectivity), in *pixel*
  coordinates of the whole raster. Vertices are integers there, so the pieces of one region cut
  at a window border share their border vertex for vertex and their union is exact; the affine
  transform is applied once, at the end, to every vertex the same way.
* **Stitch** the pieces: every window-local region gets a global id; along each window border
  the ids of equal-class pixels facing each other are joined in a union-find. Only the last
  pixel row of the previous window row and the last column of the previous window are kept,
  never pixel arrays. After each window row, every region that does not reach the next row is
  complete: its pieces are merged with ``shapely.union_all`` into one polygon.
* **Sieve** (``min_area``) in a first streaming pass that measures every region exactly (size,
  first pixel, neighbours, joined across windows the same way), then decides globally which
  small region merges into which neighbour; the second pass applies those decisions pixel by
  pixel while polygonising. The result does not depend on the window size.
* **Simplify** (``simplify``): vertices are added where a neighbour's edge ends (so edges match
  vertex for vertex, a valid GEOS coverage) and the whole layer goes through
  ``shapely.coverage_simplify``; shared edges are simplified once for both sides.

Where each step lives: :mod:`geoddu.io.class_windows` (reading), :mod:`geoddu.io.window_regions`
(one window's regions), :mod:`geoddu.io.seams` (stitching), :mod:`geoddu.io.sieve`,
:mod:`geoddu.io.polygon_edges` (repair, edge matching, map coordinates) and
:mod:`geoddu.io.vector_write` (the atomic write). This module runs them in order.

The layer is written with geopandas/pyogrio into a temporary folder beside the destination and
renamed into place (:class:`geoddu.io.writer.AtomicOutput`); a failed run leaves nothing.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.class_windows import (
    NONE,
    CancelFn,
    ClassReader,
    ProgressFn,
    class_names_of,
    window_grid,
)
from geoddu.io.polygon_edges import match_edges, orient_polygons, repair, to_map
from geoddu.io.seams import Seams, UnionFind
from geoddu.io.sieve import SievePlan, measure_regions
from geoddu.io.vector_write import DRIVERS, driver_for, remove_vector, write_layer
from geoddu.io.window_regions import build_polygons, line_labels, region_shapes
from geoddu.io.writer import AtomicOutput

__all__ = [
    "DRIVERS",
    "VectorizeResult",
    "class_names_of",
    "driver_for",
    "remove_vector",
    "vectorize",
]

DEFAULT_WINDOW = 1024


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
    sieved_pixels: int = 0
    simplify: float | None = None
    seconds: float = 0.0
    classes: list[int] | None = field(default=None)

    def summary(self) -> str:
        parts = [f"{self.output}: {self.polygons} polygons"]
        parts.append(f"{len(self.polygons_per_class)} classes")
        if self.min_area_pixels is not None:
            parts.append(
                f"sieved regions < {self.min_area_pixels} px ({self.sieved_pixels} px changed)"
            )
        if self.simplify is not None:
            parts.append(f"simplified at {self.simplify:g}")
        plural = "s" if self.windows != 1 else ""
        parts.append(f"{self.windows} window{plural} of {self.window_size} px")
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
            "sieved_pixels": self.sieved_pixels,
            "simplify": self.simplify,
            "classes": self.classes,
            "seconds": round(self.seconds, 3),
        }


def _name(names: list[str] | None, class_id: int) -> str:
    if names is not None and class_id < len(names):
        return names[class_id]
    return f"class {class_id}"


# --- polygonising ----------------------------------------------------------------------------


def _polygonize(
    reader: ClassReader,
    windows: list[tuple[int, int, int, int]],
    width: int,
    height: int,
    plan: SievePlan | None,
    keep_lut: np.ndarray | None,
    progress: ProgressFn,
    cancel: CancelFn | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: one polygon per connected region (pixel coordinates) and its class."""
    seams = Seams(width)
    uf = UnionFind()
    pending: dict[int, tuple[int, list]] = {}  # root gid -> (class, pieces)
    out_geoms: list[np.ndarray] = []
    out_cls: list[np.ndarray] = []
    next_gid = 1

    def finish(roots: Iterable[int]) -> None:
        single, single_cls, merged, merged_cls = [], [], [], []
        for r in roots:
            value, pieces = pending.pop(r)
            if len(pieces) == 1:
                single.append(pieces[0])
                single_cls.append(value)
            else:
                merged.append(shapely.union_all(pieces))
                merged_cls.append(value)
        if merged:
            # The union keeps the vertices where window borders cut straight edges; dropping
            # collinear vertices (after normalising, so that no ring starts on one) gives the
            # polygon GDAL would have produced from the whole map, whatever the window size.
            clean = shapely.simplify(shapely.normalize(np.asarray(merged, dtype=object)), 0.0)
            out_geoms.append(clean)
            out_cls.append(np.asarray(merged_cls, dtype=np.uint8))
        if single:
            out_geoms.append(np.asarray(single, dtype=object))
            out_cls.append(np.asarray(single_cls, dtype=np.uint8))

    def end_row() -> None:
        g = seams.below_gid
        nz = g > 0
        alive: set[int] = set()
        if nz.any():
            uniq, inv = np.unique(g[nz], return_inverse=True)
            roots = np.array([uf.find(int(x)) for x in uniq], np.int64)
            g[nz] = roots[inv]  # the seam now holds roots, so the union-find can be emptied
            alive = set(roots.tolist())
        finish([r for r in pending if r not in alive])
        uf.parent.clear()

    last_row = windows[0][0] if windows else 0
    for index, (r0, c0, h, w) in enumerate(windows):
        if cancel is not None and cancel():
            raise Cancelled("vectorize cancelled; nothing was written")
        if r0 != last_row:
            end_row()
            seams.next_row()
            last_row = r0
        cls = reader.read(r0, c0, h, w)
        if plan is not None:
            cls = plan.apply(index, cls)
        if keep_lut is not None:
            cls = keep_lut[cls]
        shapes = region_shapes(cls)
        n = len(shapes)
        polys = build_polygons(shapes, c0, r0)
        values = np.fromiter((v for _, v in shapes), dtype=np.uint8, count=n)
        del shapes
        lines = line_labels(cls, polys, r0, c0)
        base = next_gid - 1
        next_gid += n

        shared = np.zeros(n + 1, bool)
        for name, cut in (
            ("top", r0 > 0),
            ("bottom", r0 + h < height),
            ("left", c0 > 0),
            ("right", c0 + w < width),
        ):
            if cut:
                shared[lines[name][1]] = True
        shared[0] = False
        closed = ~shared[1:]
        if closed.any():  # regions inside this window are complete already
            out_geoms.append(polys[closed])
            out_cls.append(values[closed])
        for i in np.flatnonzero(shared[1:]).tolist():
            pending[base + i + 1] = (int(values[i]), [polys[i]])

        gid_lines = {k: (c, np.where(lab > 0, lab + base, 0)) for k, (c, lab) in lines.items()}
        same, _ = seams.meet(r0, c0, gid_lines)
        for a, b in same.tolist():
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb:
                continue
            if len(pending[ra][1]) < len(pending[rb][1]):
                ra, rb = rb, ra  # extend the longer list: each piece moves O(log n) times
            uf.parent[rb] = ra
            pending[ra][1].extend(pending.pop(rb)[1])
        progress("polygonize", index + 1, len(windows))
    finish(list(pending))
    if not out_geoms:
        return np.empty(0, dtype=object), np.empty(0, np.uint8)
    return np.concatenate(out_geoms), np.concatenate(out_cls)


# --- the public function ---------------------------------------------------------------------


def vectorize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    min_area: float | None = None,
    simplify: float | None = None,
    classes: Sequence[int] | None = None,
    window_size: int = DEFAULT_WINDOW,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> VectorizeResult:
    """Polygonise the class map ``src`` into the vector file ``dst`` (format by extension).

    One polygon per 4-connected region, with columns ``class_id`` and ``class_name`` (from the
    raster's ``CLASS_NAMES`` tag), in the raster's CRS. Nodata makes no polygon.

    ``min_area`` (square map units): regions smaller than this are first merged into their
    largest neighbour (a sieve, computed exactly over the whole map). ``simplify`` (map
    units): topology-preserving simplification of the edges shared by neighbouring polygons;
    the layer's outline (raster edge, nodata) is kept. ``classes``: class ids to write (the
    others are still used for sieving and simplification). ``window_size``: pixels per window
    side; memory grows with its square. ``progress(stage, done, total)`` is called after each
    window; ``cancel()`` returning True stops the run with :class:`~geoddu.Cancelled`.
    Raises :class:`~geoddu.GeodduError` for user errors; nothing is written then.
    """
    started = time.perf_counter()
    src = os.fspath(src)
    dst_path = Path(os.fspath(dst))
    driver = driver_for(dst_path)
    if window_size < 2:
        raise GeodduError(f"window size must be at least 2 pixels, got {window_size}")
    if min_area is not None and not (min_area > 0 and math.isfinite(min_area)):
        raise GeodduError(f"--min-area must be a positive area, got {min_area}")
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

        windows = window_grid(height, width, window_size)
        plan = None
        if threshold is not None and threshold > 1:
            plan = measure_regions(reader, windows, width, height, threshold, report, cancel)
        # With --simplify every class is polygonised: shared edges with classes that are not
        # written still have to be simplified the same way on both sides.
        lut = None if simplify is not None else keep_lut
        geoms, cls = _polygonize(reader, windows, width, height, plan, lut, report, cancel)
    finally:
        reader.close()

    geoms = repair(geoms, src)
    # Rows in raster order of the regions (top to bottom, then left to right), not in the
    # order windows completed them: the layer does not depend on the window size.
    bounds = shapely.bounds(geoms)
    area = shapely.area(geoms)
    order = np.lexsort((area, bounds[:, 2], bounds[:, 3], bounds[:, 0], bounds[:, 1]))
    geoms, cls = geoms[order], cls[order]
    if simplify is not None and geoms.size:
        report("simplify", 0, 1)
        geoms = to_map(match_edges(geoms), transform)
        # simplify_boundary=False: the outline (raster edge, nodata) stays on the pixel edges,
        # so the layer still covers exactly the valid pixels.
        geoms = orient_polygons(shapely.coverage_simplify(geoms, simplify, simplify_boundary=False))
        report("simplify", 1, 1)
        if keep_lut is not None:
            keep = keep_lut[cls] != NONE
            geoms, cls = geoms[keep], cls[keep]
    else:
        geoms = to_map(geoms, transform, orient=True)
    if geoms.size == 0:
        what = "of the selected classes " if selected is not None else ""
        raise GeodduError(f"{src}: no valid pixels {what}to polygonise; nothing was written")

    import geopandas as gpd  # heavy; only needed here

    ids = cls.astype(np.int32)
    lookup = {int(i): _name(names, int(i)) for i in np.unique(cls)}
    gdf = gpd.GeoDataFrame(
        {"class_id": ids, "class_name": [lookup[int(i)] for i in cls]},
        geometry=geoms,
        crs=crs.to_wkt(),
    )
    report("write", 0, 1)
    write_layer(gdf, dst_path, driver, overwrite)
    report("write", 1, 1)

    counts = np.bincount(cls, minlength=256)
    per_class = {lookup[int(i)]: int(counts[i]) for i in sorted(lookup)}
    return VectorizeResult(
        output=dst_path,
        driver=driver,
        crs=crs.to_string(),
        polygons=int(geoms.size),
        polygons_per_class=per_class,
        windows=len(windows),
        window_size=window_size,
        min_area_pixels=threshold,
        sieved_pixels=plan.sieved_pixels if plan is not None else 0,
        simplify=simplify,
        seconds=time.perf_counter() - started,
        classes=selected,
    )
