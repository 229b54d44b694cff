"""``--sieve smallest-first``: geoddu's own whole-map sieve for ``--min-area``.

Kept beside GDAL's (the default, :mod:`geoddu.vectorize.sieve_gdal`) for its rule, which GDAL
cannot express: small regions are merged smallest first, each judged by its neighbours as they
are then, and groups of small regions merge together until they reach the threshold, so no
region with a valid neighbour stays below it (GDAL leaves such groups as they were; the
figures are in ``docs/vectorize.md``).

Pass 1 streams the windows and measures every region exactly (size, class, first pixel,
neighbours, joined across windows); then every region below the threshold is merged into a
neighbour. The resulting :class:`SievePlan` is applied window by window in pass 2. Nothing
depends on the window size.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import rasterio.features

from geoddu.errors import Cancelled
from geoddu.vectorize.class_windows import NONE, CancelFn, ClassReader, ProgressFn
from geoddu.vectorize.seams import Seams, UnionFind, unique_pairs
from geoddu.vectorize.window_regions import label_raster, region_shapes


@dataclass
class SievePlan:
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
        shapes = region_shapes(cls)
        if len(shapes) != n:
            raise RuntimeError("vectorize: the map changed between the two passes")
        new_cls = self.final_cls[base + 1 + moved]
        out = cls.copy()
        rasterio.features.rasterize(
            ((shapes[i][0], int(v)) for i, v in zip(moved.tolist(), new_cls, strict=True)),
            out=out,
        )
        return out


def measure_regions(
    reader: ClassReader,
    windows: list[tuple[int, int, int, int]],
    width: int,
    height: int,
    threshold: int,
    progress: ProgressFn,
    cancel: CancelFn | None,
    fits: Callable[[int], None] | None = None,
) -> SievePlan | None:
    """Pass 1: exact size, class, first pixel and neighbours of every region of the map.
    ``fits(pieces)``, if given, is told how many window-local regions the decision step will
    hold before it starts (and may refuse)."""
    seams = Seams(width)
    uf = UnionFind()
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
            reader.next_row()
            last_row = r0
        cls = reader.read(r0, c0, h, w)
        shapes = region_shapes(cls)
        n = len(shapes)
        labels = label_raster(shapes, (h, w))
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
            pairs.append(unique_pairs(np.minimum(pa, pb)[keep], np.maximum(pa, pb)[keep]))
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
    if fits is not None:
        fits(n_gid)
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
    edge = unique_pairs(np.minimum(ea, eb)[keep], np.maximum(ea, eb)[keep])
    merged_into = _merge_small(edge, small, size_r, anchor_r, cls, threshold)
    final_root = _resolve(merged_into, n_gid)[root]
    final_cls = cls[final_root]
    final_cls[0] = NONE
    changed = final_cls != cls
    return SievePlan(bases, counts, final_cls, changed, int(size[changed].sum()))


def _resolve(parent: dict[int, int] | np.ndarray, n: int) -> np.ndarray:
    """The root of every id 0..n-1 as an array (pointer jumping, vectorised); `parent` maps
    ids to a parent (a dict of the ids that have one, or an array of all)."""
    if isinstance(parent, np.ndarray):
        arr = parent.astype(np.int64, copy=True)
    else:
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
) -> np.ndarray:
    """Merge every region below ``threshold`` pixels into its largest neighbour.

    Smallest region first (ties: first pixel in raster order); it takes the class of its
    largest neighbour (ties: lower class id, then first pixel) and joins that neighbour and
    every other neighbour of that class, which it now connects. A merged region still below
    the threshold goes back into the queue. Regions with no valid neighbour stay. Every key
    used (sizes, classes, first pixels) is a property of the map, not of the windows.
    Returns every id's parent (itself where it joined nothing), for `_resolve`.

    Flat arrays throughout, not a Python set per region: a map of two million small regions
    needed 1.76 GB that way. A merged region's neighbours are those of its members (a linked
    list per region), each mapped to where it now belongs.
    """
    n = size.size
    # Each small region's neighbours, CSR.
    src = np.concatenate([edge[:, 0], edge[:, 1]])
    dst = np.concatenate([edge[:, 1], edge[:, 0]])
    keep = small[src]
    src, dst = src[keep], dst[keep]
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    # array('q'): Python-speed element access at 8 bytes an entry.
    ptr = _int64s(indptr)
    adjacent = _int64s(dst[np.argsort(src, kind="stable")])
    del src, dst, keep, indptr

    start = np.flatnonzero(small)
    queue0 = start[np.lexsort((start, anchor[start], size[start]))]
    sz, anc = _int64s(size), _int64s(anchor)
    parent = _int64s(np.arange(n))
    nxt = _int64s(np.full(n, -1))  # next member of the same region
    tail = _int64s(np.arange(n))  # last member of a region
    klass = np.ascontiguousarray(cls, dtype=np.uint8).tobytes()

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def neighbours(r: int) -> set[int]:
        out: set[int] = set()
        m = r
        while m != -1:
            a, b = ptr[m], ptr[m + 1]
            if b > a:
                out.update(find(y) for y in adjacent[a:b])
            m = nxt[m]
        out.discard(r)
        return out

    requeued: list[tuple[int, int, int]] = []
    i, total_start = 0, len(queue0)
    sizes0, anchors0, order0 = _int64s(size[queue0]), _int64s(anchor[queue0]), _int64s(queue0)
    del queue0
    while i < total_start or requeued:
        if requeued and (i >= total_start or requeued[0] < (sizes0[i], anchors0[i], order0[i])):
            s, _, r = heapq.heappop(requeued)
        else:
            s, r = sizes0[i], order0[i]
            i += 1
        if parent[r] != r or sz[r] != s or s >= threshold:
            continue  # stale entry: merged away or grown since it was queued
        nbrs = neighbours(r)
        if not nbrs:  # stays; it is never queued again
            continue
        best = max(nbrs, key=lambda x: (sz[x], -klass[x], -anc[x]))
        group = [x for x in nbrs if klass[x] == klass[best] and x != best]
        group.append(r)
        total = sz[best] + sum(sz[x] for x in group)
        first = min(anc[best], *(anc[x] for x in group))
        for x in group:
            parent[x] = best
        anc[best] = first
        sz[best] = total
        if total < threshold:
            # best is small, so every member is (none is larger than best): their neighbours
            # become best's, through the member list.
            for x in group:
                nxt[tail[best]] = x
                tail[best] = tail[x]
            heapq.heappush(requeued, (total, first, best))
    return np.frombuffer(parent, dtype=np.int64).copy()


def _int64s(values: np.ndarray) -> array:
    return array("q", np.ascontiguousarray(values, dtype=np.int64).tobytes())
