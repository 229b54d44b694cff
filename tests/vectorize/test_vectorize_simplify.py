"""`--simplify`: a coverage stays a coverage.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from class_maps import PIXEL, WIN, canonical

from geoddu.vectorize import vectorize


def test_simplify_keeps_a_coverage(tmp_path, classes_tif):
    src, cls = classes_tif
    plain = gpd.read_file(vectorize(src, tmp_path / "plain.gpkg", window_size=WIN).output)
    out = tmp_path / "simple.gpkg"
    vectorize(src, out, simplify=PIXEL, window_size=WIN)
    gdf = gpd.read_file(out)
    geoms = gdf.geometry.values
    assert len(gdf) == len(plain) and gdf.is_valid.all()
    assert shapely.coverage_is_valid(geoms)  # no overlaps, edges matched vertex for vertex
    union = shapely.union_all(geoms)
    assert gdf.area.sum() == pytest.approx(union.area, rel=1e-9)  # no overlaps
    # No gaps: the outline is kept, so the union is still exactly the valid pixels.
    assert union.area == pytest.approx(np.count_nonzero(cls != 255) * PIXEL**2, rel=1e-9)
    assert (
        shapely.get_num_coordinates(geoms).sum()
        < shapely.get_num_coordinates(plain.geometry.values).sum()
    )
    # Stated tolerance: simplifying at one pixel moves each class's area by less than 2 %.
    for c in range(5):
        before = np.count_nonzero(cls == c) * PIXEL**2
        after = gdf.area[gdf.class_id == c].sum()
        assert abs(after - before) < 0.02 * before, c


def test_simplify_with_classes_and_windows(tmp_path, classes_tif):
    src, _ = classes_tif
    full = vectorize(src, tmp_path / "full.gpkg", simplify=PIXEL, window_size=1024).output
    some = vectorize(src, tmp_path / "some.gpkg", simplify=PIXEL, classes=[2], window_size=WIN)
    full_gdf = gpd.read_file(full)
    # Simplified with all classes, then filtered: the same polygons as in the full layer.
    assert canonical(gpd.read_file(some.output)) == canonical(full_gdf[full_gdf.class_id == 2])
