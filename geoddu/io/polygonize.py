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

The layer is written with geopandas/pyogrio into a temporary folder beside the destination and
renamed into place (:class:`geoddu.io.writer.AtomicOutput`); a failed run leaves nothing.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from rasterio.errors import RasterioError

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.gdal_errors import disk_full
from geoddu.io.raster import open_raster
from geoddu.io.vector import pyogrio_path
from geoddu.io.writer import CLASS_NODATA, AtomicOutput

__all__ = ["DRIVERS", "VectorizeResult", "class_names_of", "driver_for", "vectorize"]

NONE = CLASS_NODATA  # no polygon: nodata, outside the raster, or a class not asked for
DEFAULT_WINDOW = 1024

# Extension -> OGR driver. Shapefile is several files; it is handled specially when written.
DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
}

# Polygons per batch in the steps over the whole layer (edge matching, map coordinates): the
# layer is changed in place batch by batch, so only one batch exists twice at a time.
_BATCH = 20_000

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


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


# --- small helpers ---------------------------------------------------------------------------


def class_names_of(tags: dict[str, str]) -> list[str] | None:
    """Class names from a class map's tags: ``CLASS_NAMES`` (JSON list) or ``CLASS_0``..."""
    raw = tags.get("CLASS_NAMES")
    if raw:
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    names = []
    while f"CLASS_{len(names)}" in tags:
        names.append(str(tags[f"CLASS_{len(names)}"]))
    return names or None


def _name(names: list[str] | None, class_id: int) -> str:
    if names is not None and class_id < len(names):
        return names[class_id]
    return f"class {class_id}"


def driver_for(path: str | os.PathLike[str]) -> str:
    """The OGR driver for an output path, by extension."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in DRIVERS:
        known = ", ".join(DRIVERS)
        raise GeodduError(
            f"{path}: unknown vector format {suffix or '(no extension)'!r}; use one of {known}"
        )
    return DRIVERS[suffix]


class _UnionFind:
    """Union-find over integer ids; only ids that were ever joined take memory."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while root in parent:
            root = parent[root]
        while x != root:  # path compression: later finds are O(1)
            nxt = parent[x]
            parent[x] = root
            x = nxt
        return root


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    return np.unique(np.column_stack((a, b)).astype(np.int64), axis=0)


class _Seams:
    """The pixels along the window borders already processed, as (class, global id) lines.

    Windows come in row-major order; a window meets the bottom line of the window row above
    and the right column of the window to its left. Only those lines are kept.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.above_cls = np.full(width, NONE, np.uint8)
        self.above_gid = np.zeros(width, np.int64)
        self.below_cls = np.full(width, NONE, np.uint8)
        self.below_gid = np.zeros(width, np.int64)
        self.left_cls: np.ndarray | None = None
        self.left_gid: np.ndarray | None = None

    def meet(
        self, r0: int, c0: int, lines: dict[str, tuple[np.ndarray, np.ndarray]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (earlier gid, this window's gid) facing each other: same class, other class."""
        same: list[np.ndarray] = []
        diff: list[np.ndarray] = []
        w = lines["top"][0].size
        faces = []
        if r0 > 0:
            faces.append((self.above_cls[c0 : c0 + w], self.above_gid[c0 : c0 + w], *lines["top"]))
        if c0 > 0 and self.left_cls is not None:
            faces.append((self.left_cls, self.left_gid, *lines["left"]))
        for prev_cls, prev_gid, cur_cls, cur_gid in faces:
            valid = (prev_cls != NONE) & (cur_cls != NONE)
            eq = valid & (prev_cls == cur_cls)
            ne = valid & (prev_cls != cur_cls)
            same.append(_unique_pairs(prev_gid[eq], cur_gid[eq]))
            diff.append(_unique_pairs(prev_gid[ne], cur_gid[ne]))
        bottom_cls, bottom_gid = lines["bottom"]
        self.below_cls[c0 : c0 + w] = bottom_cls
        self.below_gid[c0 : c0 + w] = bottom_gid
        self.left_cls, self.left_gid = lines["right"]
        empty = np.empty((0, 2), np.int64)
        return (
            np.concatenate(same) if same else empty,
            np.concatenate(diff) if diff else empty,
        )

    def next_row(self) -> None:
        self.above_cls, self.below_cls = self.below_cls, self.above_cls
        self.above_gid, self.below_gid = self.below_gid, self.above_gid
        self.below_cls.fill(NONE)
        self.below_gid.fill(0)
        self.left_cls = self.left_gid = None


def _windows(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    return [
        (r0, c0, min(size, height - r0), min(size, width - c0))
        for r0 in range(0, height, size)
        for c0 in range(0, width, size)
    ]


def _shapes(cls: np.ndarray) -> list[tuple[dict, float]]:
    """GDAL's polygons of the 4-connected regions of a window (pixel coordinates)."""
    if not (cls != NONE).any():
        return []
    return list(rasterio.features.shapes(cls, mask=cls != NONE, connectivity=4))


def _build(shapes: Sequence[tuple[dict, float]], c0: int, r0: int) -> np.ndarray:
    """shapely polygons from GDAL's GeoJSON rings, shifted to whole-raster pixel coordinates.

    Built in bulk (one coordinate array, ``linearrings``/``polygons`` with indices): several
    times faster than ``shapely.geometry.shape`` per polygon.
    """
    if not shapes:
        return np.empty(0, dtype=object)
    coords: list = []
    ring_len: list[int] = []
    ring_poly: list[int] = []
    for i, (geom, _) in enumerate(shapes):
        for ring in geom["coordinates"]:
            coords.extend(ring)
            ring_len.append(len(ring))
            ring_poly.append(i)
    xy = np.asarray(coords, dtype=np.float64)
    xy += (c0, r0)  # integers: exact
    rings = shapely.linearrings(xy, indices=np.repeat(np.arange(len(ring_len)), ring_len))
    return shapely.polygons(rings, indices=np.asarray(ring_poly))


def _runs(line: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = np.flatnonzero(np.r_[True, line[1:] != line[:-1]])
    return starts, np.diff(np.r_[starts, line.size])


def _line_labels(
    cls: np.ndarray, polys: np.ndarray, r0: int, c0: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Class and window-local label (polygon index + 1, 0 = none) of the 4 border lines.

    Each run of equal class along a line lies in one region; the polygon holding the centre
    of its first pixel is found with a spatial index, so no label raster is needed.
    """
    h, w = cls.shape
    specs = {
        "top": (cls[0, :], 0, 0, True),
        "bottom": (cls[-1, :], h - 1, 0, True),
        "left": (cls[:, 0], 0, 0, False),
        "right": (cls[:, -1], 0, w - 1, False),
    }
    runs = {}
    xs, ys = [], []
    for name, (line, r, c, horizontal) in specs.items():
        starts, lengths = _runs(line)
        keep = line[starts] != NONE
        runs[name] = (starts, lengths, keep)
        s = starts[keep]
        if horizontal:
            xs.append(c0 + s + 0.5)
            ys.append(np.full(s.size, r0 + r + 0.5))
        else:
            xs.append(np.full(s.size, c0 + c + 0.5))
            ys.append(r0 + s + 0.5)
    x, y = np.concatenate(xs), np.concatenate(ys)
    found = np.zeros(x.size, np.int64)
    if x.size:
        tree = shapely.STRtree(polys)
        point_idx, poly_idx = tree.query(shapely.points(x, y), predicate="within")
        found[point_idx] = poly_idx + 1
        if np.count_nonzero(found) != x.size:
            raise RuntimeError("polygonize: a border pixel fell in no polygon")
    out = {}
    pos = 0
    for name, (line, _, _, _) in specs.items():
        starts, lengths, keep = runs[name]
        labels = np.zeros(starts.size, np.int64)
        k = int(keep.sum())
        labels[keep] = found[pos : pos + k]
        pos += k
        out[name] = (line, np.repeat(labels, lengths))
    return out


def _label_raster(shapes: Sequence[tuple[dict, float]], shape: tuple[int, int]) -> np.ndarray:
    """Window-local label raster (polygon index + 1, 0 = none), burnt back from the polygons.

    Pixel-aligned polygons burnt with the pixel-centre rule reproduce the regions exactly.
    """
    if not shapes:
        return np.zeros(shape, np.int32)
    return rasterio.features.rasterize(
        ((geom, i + 1) for i, (geom, _) in enumerate(shapes)),
        out_shape=shape,
        fill=0,
        dtype="int32",
    )


# --- reading ---------------------------------------------------------------------------------


class _ClassReader:
    """Class windows (uint8, NONE where invalid) from the class map's first band."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.source = open_raster(src)
        try:
            if self.source.crs is None:
                raise GeodduError(f"{src}: has no CRS; polygons need one")
            if self.source.count != 1:
                raise GeodduError(
                    f"{src}: has {self.source.count} bands; a class map has exactly one"
                )
            if self.source.dtype.kind not in "iub":
                raise GeodduError(
                    f"{src}: holds {self.source.dtype} values; a class map holds integer class ids"
                )
            try:
                with rasterio.open(src) as ds:
                    tags = ds.tags()
            except RasterioError:
                tags = {}
            self.names = class_names_of(tags)
        except BaseException:
            self.source.close()
            raise

    def read(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        data, valid = self.source.read_with_mask(r0, c0, h, w)
        band = data[0]
        if band.dtype != np.uint8:
            bad = valid & ((band < 0) | (band >= NONE))
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise GeodduError(
                    f"{self.src}: class id {band[r, c]} at row {r0 + r}, col {c0 + c} is "
                    f"outside 0..{NONE - 1}"
                )
        cls = band.astype(np.uint8, copy=False)
        return np.where(valid, cls, np.uint8(NONE))

    def close(self) -> None:
        self.source.close()


# --- sieving ---------------------------------------------------------------------------------


@dataclass
class _SievePlan:
    """Pass 1's decision: the class of every window-local region of the original map."""

    bases: list[int]  # per window: gid of its label 1 is base + 1
    counts: list[int]  # per window: number of labels
    final_cls: np.ndarray  # per gid: its class after sieving
    changed: np.ndarray  # per gid: does it change class?
    sieved_pixels: int

    def apply(self, index: int, cls: np.ndarray) -> np.ndarray:
        base, n = self.bases[index], self.counts[index]
        moved = np.flatnonzero(self.changed[base + 1 : base + n + 1])
        if moved.size == 0:
            return cls
        # The same regions in the same order as in pass 1 (GDAL is deterministic); only the
        # ones that change class are burnt, with their new class, over the window.
        shapes = _shapes(cls)
        if len(shapes) != n:
            raise RuntimeError("vectorize: the map changed between the two passes")
        new_cls = self.final_cls[base + 1 + moved]
        out = cls.copy()
        rasterio.features.rasterize(
            ((shapes[i][0], int(v)) for i, v in zip(moved.tolist(), new_cls, strict=True)),
            out=out,
        )
        return out


def _measure(
    reader: _ClassReader,
    windows: list[tuple[int, int, int, int]],
    width: int,
    height: int,
    threshold: int,
    progress: ProgressFn,
    cancel: CancelFn | None,
) -> _SievePlan | None:
    """Pass 1: exact size, class, first pixel and neighbours of every region of the map."""
    seams = _Seams(width)
    uf = _UnionFind()
    sizes: list[np.ndarray] = [np.zeros(1, np.int64)]
    classes: list[np.ndarray] = [np.full(1, NONE, np.uint8)]
    anchors: list[np.ndarray] = [np.zeros(1, np.int64)]
    edges: list[np.ndarray] = []
    bases: list[int] = []
    counts: list[int] = []
    next_gid = 1
    last_row = windows[0][0] if windows else 0
    for index, (r0, c0, h, w) in enumerate(windows):
        if cancel is not None and cancel():
            raise Cancelled("vectorize cancelled; nothing was written")
        if r0 != last_row:
            seams.next_row()
            last_row = r0
        cls = reader.read(r0, c0, h, w)
        shapes = _shapes(cls)
        n = len(shapes)
        labels = _label_raster(shapes, (h, w))
        base = next_gid - 1
        bases.append(base)
        counts.append(n)
        next_gid += n

        flat = labels.ravel()
        size = np.bincount(flat, minlength=n + 1)[1:].astype(np.int64)
        cls_of = np.fromiter((v for _, v in shapes), dtype=np.uint8, count=n)
        # The first pixel of a region in raster order: a key that does not depend on windows.
        first = np.full(n + 1, h * w, np.int64)
        np.minimum.at(first, flat, np.arange(flat.size, dtype=np.int64))
        first = first[1:]
        anchor = (r0 + first // w) * width + (c0 + first % w)
        sizes.append(size)
        classes.append(cls_of)
        anchors.append(anchor)

        # Neighbours inside the window. A pair matters only if one side may be small: a piece
        # below the threshold, or one cut by a window border (its full size is not known yet).
        shared = np.zeros(n + 1, bool)
        lines = {
            "top": (cls[0, :], labels[0, :]),
            "bottom": (cls[-1, :], labels[-1, :]),
            "left": (cls[:, 0], labels[:, 0]),
            "right": (cls[:, -1], labels[:, -1]),
        }
        if r0 > 0:
            shared[labels[0, :]] = True
        if r0 + h < height:
            shared[labels[-1, :]] = True
        if c0 > 0:
            shared[labels[:, 0]] = True
        if c0 + w < width:
            shared[labels[:, -1]] = True
        shared[0] = False
        interesting = shared.copy()
        interesting[1:] |= size < threshold
        pairs = []
        for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
            m = (a != b) & (a > 0) & (b > 0)
            pa, pb = a[m], b[m]
            keep = interesting[pa] | interesting[pb]
            pairs.append(_unique_pairs(np.minimum(pa, pb)[keep], np.maximum(pa, pb)[keep]))
        local = np.concatenate(pairs)
        if local.size:
            edges.append(local + base)

        gid_lines = {
            k: (c, np.where(lab > 0, lab.astype(np.int64) + base, 0))
            for k, (c, lab) in lines.items()
        }
        same, diff = seams.meet(r0, c0, gid_lines)
        for a, b in same.tolist():
            ra, rb = uf.find(a), uf.find(b)
            if ra != rb:
                uf.parent[rb] = ra
        if diff.size:
            edges.append(diff)
        progress("sieve", index + 1, len(windows))

    n_gid = next_gid
    size = np.concatenate(sizes)
    cls = np.concatenate(classes)
    anchor = np.concatenate(anchors)
    del sizes, classes, anchors
    root = _resolve(uf.parent, n_gid)
    uf.parent.clear()
    # Region totals, stored at each region's root id.
    size_r = np.bincount(root, weights=size, minlength=n_gid).astype(np.int64)
    anchor_r = np.full(n_gid, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(anchor_r, root, anchor)
    is_root = root == np.arange(n_gid)
    is_root[0] = False
    small = is_root & (size_r < threshold)
    if not small.any():
        return None

    edge = np.concatenate(edges) if edges else np.empty((0, 2), np.int64)
    del edges
    ea, eb = root[edge[:, 0]], root[edge[:, 1]]
    keep = (small[ea] | small[eb]) & (ea != eb)
    edge = _unique_pairs(np.minimum(ea, eb)[keep], np.maximum(ea, eb)[keep])
    merged_into = _merge_small(edge, small, size_r, anchor_r, cls, threshold)
    final_root = _resolve(merged_into, n_gid)[root]
    final_cls = cls[final_root]
    final_cls[0] = NONE
    changed = final_cls != cls
    return _SievePlan(bases, counts, final_cls, changed, int(size[changed].sum()))


def _resolve(parent: dict[int, int], n: int) -> np.ndarray:
    """The root of every id 0..n-1 as an array (pointer jumping, vectorised)."""
    arr = np.arange(n, dtype=np.int64)
    if parent:
        keys = np.fromiter(parent.keys(), np.int64, len(parent))
        vals = np.fromiter(parent.values(), np.int64, len(parent))
        arr[keys] = vals
        while True:
            nxt = arr[arr]
            if np.array_equal(nxt, arr):
                break
            arr = nxt
    return arr


def _merge_small(
    edge: np.ndarray,
    small: np.ndarray,
    size: np.ndarray,
    anchor: np.ndarray,
    cls: np.ndarray,
    threshold: int,
) -> dict[int, int]:
    """Merge every region below ``threshold`` pixels into a neighbour, like ``gdal_sieve``.

    Smallest region first (ties: first pixel in raster order); it takes the class of its
    largest neighbour (ties: lower class id, then first pixel) and joins that neighbour and
    every other neighbour of that class, which it now connects. A merged region still below
    the threshold goes back into the queue. Regions with no valid neighbour stay. Every key
    used (sizes, classes, first pixels) is a property of the map, not of the windows.
    Returns ``{merged id: id it joined}``; ``size`` and ``anchor`` are updated in place.
    """
    adj: dict[int, set[int]] = {int(r): set() for r in np.flatnonzero(small)}
    for a, b in edge.tolist():
        if a in adj:
            adj[a].add(b)
        if b in adj:
            adj[b].add(a)
    merged: dict[int, int] = {}

    def find(x: int) -> int:
        root = x
        while root in merged:
            root = merged[root]
        while x != root:
            nxt = merged[x]
            merged[x] = root
            x = nxt
        return root

    heap = [(int(size[r]), int(anchor[r]), r) for r in adj]
    heapq.heapify(heap)
    while heap:
        s, _, r = heapq.heappop(heap)
        if r in merged or int(size[r]) != s or s >= threshold:
            continue  # stale entry: merged away or grown since it was queued
        nbrs = {find(x) for x in adj[r]}
        nbrs.discard(r)
        if not nbrs:
            adj.pop(r, None)
            continue
        best = max(nbrs, key=lambda x: (int(size[x]), -int(cls[x]), -int(anchor[x])))
        group = [x for x in nbrs if cls[x] == cls[best] and x != best]
        group.append(r)
        total = int(size[best]) + sum(int(size[x]) for x in group)
        for x in group:
            merged[x] = best
        anchor[best] = min(int(anchor[best]), *(int(anchor[x]) for x in group))
        size[best] = total
        if total < threshold:
            # best is small, so every member is (none is larger than best): all have adj.
            joined = adj.setdefault(best, set())
            for x in group:
                joined |= adj.pop(x, set())
            heapq.heappush(heap, (total, int(anchor[best]), best))
        else:
            for x in group:
                adj.pop(x, None)
            adj.pop(best, None)
    return merged


# --- polygonising ----------------------------------------------------------------------------


def _polygonize(
    reader: _ClassReader,
    windows: list[tuple[int, int, int, int]],
    width: int,
    height: int,
    plan: _SievePlan | None,
    keep_lut: np.ndarray | None,
    progress: ProgressFn,
    cancel: CancelFn | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: one polygon per connected region (pixel coordinates) and its class."""
    seams = _Seams(width)
    uf = _UnionFind()
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
        shapes = _shapes(cls)
        n = len(shapes)
        polys = _build(shapes, c0, r0)
        values = np.fromiter((v for _, v in shapes), dtype=np.uint8, count=n)
        del shapes
        lines = _line_labels(cls, polys, r0, c0)
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


def _repair(geoms: np.ndarray, src: str) -> np.ndarray:
    """Make sure every polygon is valid (GDAL's and GEOS's already are; this is a safety net)."""
    bad = np.flatnonzero(~shapely.is_valid(geoms))
    if bad.size:
        fixed = shapely.make_valid(geoms[bad])
        kinds = shapely.get_type_id(fixed)
        if not np.isin(kinds, (3, 6)).all():  # Polygon, MultiPolygon
            raise GeodduError(f"{src}: produced an invalid polygon that cannot be repaired")
        geoms = geoms.copy()
        geoms[bad] = fixed
    return geoms


def _match_edges(geoms: np.ndarray) -> np.ndarray:
    """Add to each polygon the vertices of other polygons lying on its edges.

    GDAL puts vertices only where a boundary turns, so where three regions meet (a T) the
    straight side has no vertex: the polygons cover the plane without gaps or overlaps, but
    their edges do not match vertex for vertex, which GEOS's coverage operations require. In
    pixel coordinates every vertex is a grid point: each ring is cut at every grid point
    (``segmentize(1)``) and keeps those points that are a vertex of some polygon.
    """
    if geoms.size == 0:
        return geoms
    xy = np.rint(shapely.get_coordinates(geoms)).astype(np.int64)
    span = int(xy[:, 1].max()) + 2
    vertices = np.unique(xy[:, 0] * span + xy[:, 1])
    del xy
    for start in range(0, geoms.size, _BATCH):
        batch = geoms[start : start + _BATCH]
        n_int = shapely.get_num_interior_rings(batch)
        owner = np.repeat(np.arange(batch.size), n_int)
        ring_no = np.concatenate([np.arange(k) for k in n_int]) if n_int.sum() else owner
        holes = shapely.get_interior_ring(batch[owner], ring_no)
        rings = np.concatenate([shapely.get_exterior_ring(batch), holes])
        ring_owner = np.concatenate([np.arange(batch.size), owner])
        dense = shapely.segmentize(rings, 1.0)
        coords, ring_idx = shapely.get_coordinates(dense, return_index=True)
        coords = np.rint(coords)
        ci = coords.astype(np.int64)
        keys = ci[:, 0] * span + ci[:, 1]
        # ``vertices`` is sorted: a binary search per point beats np.isin's sort of the batch.
        found = np.minimum(np.searchsorted(vertices, keys), vertices.size - 1)
        keep = vertices[found] == keys
        new_rings = shapely.linearrings(coords[keep], indices=ring_idx[keep])
        # Shell first for each polygon: stable sort by owner keeps shells (listed first) ahead.
        order = np.argsort(ring_owner, kind="stable")
        geoms[start : start + batch.size] = shapely.polygons(
            new_rings[order], indices=ring_owner[order]
        )
    return geoms


def _to_map(geoms: np.ndarray, transform: Affine, *, orient: bool = False) -> np.ndarray:
    """Pixel -> map coordinates, in place and in chunks (never two copies of the layer)."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        x, y = xy[:, 0], xy[:, 1]
        return np.column_stack((a * x + b * y + c, d * x + e * y + f))

    for start in range(0, geoms.size, _BATCH):
        part = shapely.transform(geoms[start : start + _BATCH], apply)
        if orient:
            part = _orient(part)
        geoms[start : start + _BATCH] = part
    return geoms


def _orient(geoms: np.ndarray) -> np.ndarray:
    if hasattr(shapely, "orient_polygons"):  # shapely >= 2.1
        # Counter-clockwise shells, clockwise holes: what RFC 7946 (GeoJSON) asks for.
        return shapely.orient_polygons(geoms, exterior_cw=False)
    return geoms


# --- writing ---------------------------------------------------------------------------------


def _shapefile_parts(path: Path) -> list[Path]:
    exts = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
    return [path.with_suffix(ext) for ext in exts]


def _write(gdf: Any, dst: Path, driver: str, overwrite: bool) -> None:
    out = AtomicOutput(dst, overwrite=overwrite)
    shapefile = driver == "ESRI Shapefile"
    if shapefile and not overwrite:
        existing = [p for p in _shapefile_parts(dst) if p.exists()]
        if existing:
            out.discard()
            raise GeodduError(f"{existing[0]} exists; pass --overwrite to replace it")
    # A private folder beside the destination: drivers may create sidecar or scratch files
    # next to what they write, and all of them go with the folder if anything fails.
    folder = out.scratch()
    try:
        try:
            folder.mkdir()
            # A plain name inside: pyogrio reads ';', '?' and '#' in a path as URL syntax, so
            # the user's name (any legal one) only appears with the final rename.
            target = folder / f"out{dst.suffix}"
            kwargs: dict[str, Any] = {"driver": driver}
            if not shapefile:
                # GDAL refuses some layer names (GeoPackage: one starting with '-'); the file
                # name is the user's, the layer name only has to be recognisable.
                kwargs["layer"] = re.sub(r"^[^A-Za-z0-9_]+", "", dst.stem) or "classes"
            try:
                with pyogrio_path(target) as safe:
                    gdf.to_file(safe, **kwargs)
            except GeodduError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many types
                if disk_full(target):
                    raise GeodduError(f"no space left on device writing {dst}") from exc
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise GeodduError(f"{dst}: cannot write {driver}: {msg}") from exc
            if shapefile:
                # Several files: each rename is atomic, the .shp goes last (with the commit),
                # so a .shp that is there always has its companions.
                for part in _shapefile_parts(dst)[1:]:
                    made = target.with_suffix(part.suffix)
                    if made.exists():
                        os.replace(made, part)
                    elif part.exists():
                        part.unlink()  # a stale index of the replaced shapefile
            os.replace(target, out.temp)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        out.commit()
    except BaseException:
        out.discard()
        raise


def remove_vector(dst: str | os.PathLike[str]) -> None:
    """Remove a written vector output (with a shapefile's companion files)."""
    path = Path(os.fspath(dst))
    parts = _shapefile_parts(path) if driver_for(path) == "ESRI Shapefile" else [path]
    for part in parts:
        part.unlink(missing_ok=True)


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

    reader = _ClassReader(src)
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

        windows = _windows(height, width, window_size)
        plan = None
        if threshold is not None and threshold > 1:
            plan = _measure(reader, windows, width, height, threshold, report, cancel)
        # With --simplify every class is polygonised: shared edges with classes that are not
        # written still have to be simplified the same way on both sides.
        lut = None if simplify is not None else keep_lut
        geoms, cls = _polygonize(reader, windows, width, height, plan, lut, report, cancel)
    finally:
        reader.close()

    geoms = _repair(geoms, src)
    # Rows in raster order of the regions (top to bottom, then left to right), not in the
    # order windows completed them: the layer does not depend on the window size.
    bounds = shapely.bounds(geoms)
    area = shapely.area(geoms)
    order = np.lexsort((area, bounds[:, 2], bounds[:, 3], bounds[:, 0], bounds[:, 1]))
    geoms, cls = geoms[order], cls[order]
    if simplify is not None and geoms.size:
        report("simplify", 0, 1)
        geoms = _to_map(_match_edges(geoms), transform)
        # simplify_boundary=False: the outline (raster edge, nodata) stays on the pixel edges,
        # so the layer still covers exactly the valid pixels.
        geoms = _orient(shapely.coverage_simplify(geoms, simplify, simplify_boundary=False))
        report("simplify", 1, 1)
        if keep_lut is not None:
            keep = keep_lut[cls] != NONE
            geoms, cls = geoms[keep], cls[keep]
    else:
        geoms = _to_map(geoms, transform, orient=True)
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
    _write(gdf, dst_path, driver, overwrite)
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
