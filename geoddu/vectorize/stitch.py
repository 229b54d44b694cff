"""Window pieces -> whole regions, handed on as soon as they are complete.

Windows come in row-major order. A region that touches none of its window's cut borders is
complete at once and leaves with its window. A region cut by window borders waits as a list
of pieces, joined across the borders in a union-find; when its window row is done and it does
not reach into the next row (its bottom line), nothing can be added to it any more: its pieces
are merged into one polygon and it leaves too. So what is held between windows is the open
regions only (those on the bottom line of the window row and on its vertical seams: a few per
pixel of the map's width), never the finished layer.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import shapely

from geoddu.vectorize.seams import Seams, UnionFind
from geoddu.vectorize.window_regions import line_labels, polygon_chunks

Batch = tuple[np.ndarray, np.ndarray]  # polygons in whole-raster pixel coordinates, classes

# Polygons converted from GDAL's dictionaries at a time (see polygon_chunks).
CHUNK = 4096


class RegionStitcher:
    """Feed it the windows in row-major order; it yields every region once, when complete."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.seams = Seams(width)
        self.uf = UnionFind()
        self.pending: dict[int, tuple[int, list]] = {}  # root gid -> (class, pieces)
        self.pieces = 0  # pieces held in ``pending``
        self.next_gid = 1
        self.row: int | None = None

    def window(self, r0: int, c0: int, cls: np.ndarray) -> Iterator[Batch]:
        """Polygonise one window (its class ids); yield the regions it completes."""
        if self.row is not None and r0 != self.row:
            yield from self._end_row()
            self.seams.next_row()
        self.row = r0
        h, w = cls.shape
        cut = {
            "top": r0 > 0,
            "bottom": r0 + h < self.height,
            "left": c0 > 0,
            "right": c0 + w < self.width,
        }
        border: list[np.ndarray] = []
        border_cls: list[np.ndarray] = []
        for polys, values in polygon_chunks(cls, c0, r0, CHUNK):
            # A polygon reaches a border line exactly when its bounds do (pixel-aligned).
            x0, y0, x1, y1 = shapely.bounds(polys).T
            shared = (
                (cut["top"] & (y0 == r0))
                | (cut["bottom"] & (y1 == r0 + h))
                | (cut["left"] & (x0 == c0))
                | (cut["right"] & (x1 == c0 + w))
            )
            if not shared.all():
                yield polys[~shared], values[~shared]
            border.append(polys[shared])
            border_cls.append(values[shared])
        pieces = np.concatenate(border) if border else np.empty(0, dtype=object)
        values = np.concatenate(border_cls) if border_cls else np.empty(0, np.uint8)
        del border, border_cls

        lines = line_labels(cls, pieces, r0, c0, cut)
        base = self.next_gid - 1
        self.next_gid += pieces.size
        for i, (value, piece) in enumerate(zip(values.tolist(), pieces, strict=True)):
            self.pending[base + i + 1] = (value, [piece])
        self.pieces += pieces.size

        gid_lines = {k: (c, np.where(lab > 0, lab + base, 0)) for k, (c, lab) in lines.items()}
        same, _ = self.seams.meet(r0, c0, gid_lines)
        uf, pending = self.uf, self.pending
        for a, b in same.tolist():
            ra, rb = uf.find(a), uf.find(b)
            if ra == rb:
                continue
            if len(pending[ra][1]) < len(pending[rb][1]):
                ra, rb = rb, ra  # extend the longer list: each piece moves O(log n) times
            uf.parent[rb] = ra
            pending[ra][1].extend(pending.pop(rb)[1])

    def finish(self) -> Iterator[Batch]:
        """After the last window: every region still waiting is complete."""
        yield from self._complete(list(self.pending))

    def _end_row(self) -> Iterator[Batch]:
        g = self.seams.below_gid
        nz = g > 0
        alive: set[int] = set()
        if nz.any():
            uniq, inv = np.unique(g[nz], return_inverse=True)
            roots = np.array([self.uf.find(int(x)) for x in uniq], np.int64)
            g[nz] = roots[inv]  # the seam now holds roots, so the union-find can be emptied
            alive = set(roots.tolist())
        self.uf.parent.clear()
        yield from self._complete([r for r in self.pending if r not in alive])

    def _complete(self, roots: list[int]) -> Iterator[Batch]:
        single, single_cls, merged, merged_cls = [], [], [], []
        for r in roots:
            value, pieces = self.pending.pop(r)
            self.pieces -= len(pieces)
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
            yield clean, np.asarray(merged_cls, dtype=np.uint8)
        if single:
            yield np.asarray(single, dtype=object), np.asarray(single_cls, dtype=np.uint8)
