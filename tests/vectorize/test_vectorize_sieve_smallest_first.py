"""`--sieve smallest-first`: geoddu's own whole-map sieve, its guarantees and its decision step.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
from class_maps import PIXEL, WIN, H, W, blocky, burn, canonical, cells, region_sizes, write_classes

from geoddu.vectorize import vectorize


def test_min_area_is_window_independent_and_leaves_no_small_region(tmp_path):
    cls = blocky(seed=5, noise=0.05)
    cls[cls == 255] = 0  # no nodata islands: every region has a neighbour
    src = write_classes(tmp_path / "noisy.tif", cls)
    layers = []
    for window in (WIN, 1024):
        out = tmp_path / f"s{window}.gpkg"
        vectorize(src, out, min_area=12 * PIXEL**2, window_size=window, sieve="smallest-first")
        gdf = gpd.read_file(out)
        assert gdf.area.min() >= 12 * PIXEL**2
        assert gdf.area.sum() == H * W * PIXEL**2
        layers.append(canonical(gdf))
    assert layers[0] == layers[1]


def test_no_small_region_with_a_neighbour_is_left_where_gdal_leaves_some(tmp_path):
    """The rule GDAL cannot express, and the reason this sieve is kept: on a map where many
    small regions are each other's largest neighbour, GDAL leaves them, this sieve merges them
    until they reach the threshold (here no region is enclosed by nodata alone)."""
    cls = cells(seed=0)
    src = write_classes(tmp_path / "cells.tif", cls)
    gdal = gpd.read_file(vectorize(src, tmp_path / "gdal.gpkg", min_area=10 * PIXEL**2).output)
    ours = vectorize(src, tmp_path / "ours.gpkg", min_area=10 * PIXEL**2, window_size=WIN,
                     sieve="smallest-first")
    gdf = gpd.read_file(ours.output)
    assert (region_sizes(burn(gdal)) < 10).sum() == 47  # printed by rasterio's sieve too
    assert (region_sizes(burn(gdf)) < 10).sum() == 0
    assert gdf.area.min() >= 10 * PIXEL**2
    assert gdf.area.sum() == gdal.area.sum() == np.count_nonzero(cls != 255) * PIXEL**2
    assert ours.sieved_pixels == np.count_nonzero(burn(gdf) != cls)


def _merge_small_with_sets(edge, small, size, anchor, cls, threshold):
    """The sieve's decision step as first written (a Python set of neighbours per small
    region), kept here as the reference for the array form in
    geoddu.vectorize.sieve_smallest_first."""
    import heapq

    adj = {int(r): set() for r in np.flatnonzero(small)}
    for a, b in edge.tolist():
        if a in adj:
            adj[a].add(b)
        if b in adj:
            adj[b].add(a)
    merged = {}

    def find(x):
        while x in merged:
            x = merged[x]
        return x

    heap = [(int(size[r]), int(anchor[r]), r) for r in adj]
    heapq.heapify(heap)
    while heap:
        s, _, r = heapq.heappop(heap)
        if r in merged or int(size[r]) != s or s >= threshold:
            continue
        nbrs = {find(x) for x in adj[r]} - {r}
        if not nbrs:
            adj.pop(r, None)
            continue
        best = max(nbrs, key=lambda x: (int(size[x]), -int(cls[x]), -int(anchor[x])))
        group = [x for x in nbrs if cls[x] == cls[best] and x != best] + [r]
        total = int(size[best]) + sum(int(size[x]) for x in group)
        for x in group:
            merged[x] = best
        anchor[best] = min(int(anchor[best]), *(int(anchor[x]) for x in group))
        size[best] = total
        if total < threshold:
            joined = adj.setdefault(best, set())
            for x in group:
                joined |= adj.pop(x, set())
            heapq.heappush(heap, (total, int(anchor[best]), best))
        else:
            for x in group:
                adj.pop(x, None)
            adj.pop(best, None)
    return merged


@pytest.mark.parametrize("seed", range(6))
def test_sieve_decision_in_flat_arrays_equals_the_set_form(seed):
    """The array form of the merge step (flat arrays, member lists) decides exactly what the
    set-per-region form decided, on random region graphs with chains of small regions."""
    from geoddu.vectorize.sieve_smallest_first import _merge_small, _resolve, unique_pairs

    rng = np.random.default_rng(seed)
    n, threshold = 3000, 12
    size = np.where(rng.random(n) < 0.7, rng.integers(1, threshold, n),
                    rng.integers(threshold, 200, n)).astype(np.int64)
    size[0] = 0
    anchor = rng.permutation(n * 10)[:n].astype(np.int64)
    cls = rng.integers(0, 4, n).astype(np.uint8)
    a, b = rng.integers(1, n, 4 * n), rng.integers(1, n, 4 * n)
    small = np.zeros(n, bool)
    small[1:] = size[1:] < threshold
    keep = (a != b) & (small[a] | small[b])
    edge = unique_pairs(np.minimum(a, b)[keep], np.maximum(a, b)[keep])
    want = _resolve(_merge_small_with_sets(edge, small, size.copy(), anchor.copy(), cls,
                                           threshold), n)
    got = _resolve(_merge_small(edge, small, size.copy(), anchor.copy(), cls, threshold), n)
    assert (want != np.arange(n)).sum() > n // 4  # the graphs do merge a lot
    assert np.array_equal(got, want)
