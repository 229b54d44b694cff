"""`--min-area`: GDAL's sieve (the default) and geoddu's exact sieve, over the whole map."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from class_maps import (
    PIXEL,
    TRANSFORM,
    WIN,
    H,
    W,
    blocky,
    canonical,
    write_classes,
)

from geoddu.vectorize.polygonize import vectorize

# --- sieving -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sieve", ["gdal", "exact"])
def test_min_area_judges_regions_across_window_borders(tmp_path, sieve):
    cls = np.zeros((H, W), np.uint8)
    cls[100:, :] = 2
    cls[62:65, 62:65] = 1  # 9 px on the corner of four windows: removed
    cls[20, 61:72] = 3  # 11 px, cut 3 + 8 by a window border: kept
    cls[30, 10:20] = 3  # exactly 10 px = the minimum area: kept
    cls[40:42, 10:14] = 3  # 8 px inside one window: removed
    cls[127:129, 127:130] = 1  # 6 px across 4 windows of class 2: removed, becomes 2
    cls[80:82, 200:202] = 255  # a small nodata hole stays a hole
    src = write_classes(tmp_path / "specks.tif", cls)
    out = tmp_path / "sieved.gpkg"
    result = vectorize(src, out, min_area=10 * PIXEL**2, window_size=WIN, sieve=sieve)
    assert result.min_area_pixels == 10 and result.sieved_pixels == 9 + 8 + 6
    gdf = gpd.read_file(out)
    assert sorted(gdf.class_id) == [0, 2, 3, 3]
    assert sorted(gdf.area[gdf.class_id == 3] / PIXEL**2) == [10, 11]
    assert gdf.area.sum() == (H * W - 4) * PIXEL**2

    # Here every small region lies in a single larger one: the same as GDAL's sieve of the
    # whole array.
    burnt = rasterio.features.rasterize(
        zip(gdf.geometry, gdf.class_id, strict=True),
        out_shape=cls.shape,
        transform=TRANSFORM,
        fill=255,
        dtype="uint8",
    )
    expected = rasterio.features.sieve(cls, 10, mask=cls != 255, connectivity=4)
    assert np.array_equal(burnt, expected)


def test_the_exact_sieve_is_window_independent_and_leaves_no_small_region(tmp_path):
    cls = blocky(seed=5, noise=0.05)
    cls[cls == 255] = 0  # no nodata islands: every region has a neighbour
    src = write_classes(tmp_path / "noisy.tif", cls)
    layers = []
    for window in (WIN, 1024):
        out = tmp_path / f"s{window}.gpkg"
        vectorize(src, out, min_area=12 * PIXEL**2, window_size=window, sieve="exact")
        gdf = gpd.read_file(out)
        assert gdf.area.min() >= 12 * PIXEL**2
        assert gdf.area.sum() == H * W * PIXEL**2
        layers.append(canonical(gdf))
    assert layers[0] == layers[1]




def _merge_small_with_sets(edge, small, size, anchor, cls, threshold):
    """The sieve's decision step as first written (a Python set of neighbours per small
    region), kept here as the reference for the array form in geoddu.vectorize.exact_sieve."""
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
    from geoddu.vectorize.exact_sieve import _merge_small, _resolve, unique_pairs

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


@pytest.mark.parametrize("window", [WIN, 1024])
def test_the_default_sieve_is_gdals_on_the_whole_map(tmp_path, window):
    """With nodata islands, noise and classes meeting in loops, the layer burnt back onto the
    grid is exactly GDAL's sieve of the whole array (4-connectivity, nodata masked), whatever
    the window size, and the summary counts the pixels it changed."""
    cls = blocky(seed=7, noise=0.08)
    src = write_classes(tmp_path / "noisy.tif", cls)
    out = tmp_path / "gdal.gpkg"
    result = vectorize(src, out, min_area=12 * PIXEL**2, window_size=window)
    expected = rasterio.features.sieve(cls, 12, mask=cls != 255, connectivity=4)
    gdf = gpd.read_file(out)
    burnt = rasterio.features.rasterize(zip(gdf.geometry, gdf.class_id, strict=True),
                                        out_shape=cls.shape, transform=TRANSFORM, fill=255,
                                        dtype="uint8")
    assert np.array_equal(burnt, expected)
    assert result.min_area_pixels == 12
    assert result.sieved_pixels == int((expected != cls).sum()) > 0


def test_gdal_keeps_a_loop_of_small_regions_the_exact_sieve_merges(tmp_path):
    """The figure the exact sieve is kept for: small regions that are each other's largest
    (here only) neighbours stay below --min-area after GDAL's sieve; after geoddu's exact sieve
    no region does."""
    cls = np.zeros((H, W), np.uint8)
    cls[49:55, 49:54] = 255  # a nodata ring around two 6-pixel regions
    cls[50:52, 50:53] = 1
    cls[52:54, 50:53] = 2
    src = write_classes(tmp_path / "checker.tif", cls)
    small = {}
    for sieve in ("gdal", "exact"):
        out = tmp_path / f"{sieve}.gpkg"
        vectorize(src, out, min_area=10 * PIXEL**2, window_size=WIN, sieve=sieve)
        area = gpd.read_file(out).area / PIXEL**2
        small[sieve] = int((area < 10).sum())
    assert small["gdal"] > 0 and small["exact"] == 0
