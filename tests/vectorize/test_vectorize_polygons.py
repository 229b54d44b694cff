"""`geoddu vectorize`: the polygons are the pixels, window by window without seams, in every
format. Class maps written by rasterio, polygonised and read back with geopandas; windows of
64 px on 200 x 300 maps, so every test crosses window borders.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from class_maps import (
    EPSG,
    NAMES,
    PIXEL,
    TRANSFORM,
    WIN,
    H,
    W,
    blocky,
    burn,
    canonical,
    pixel_regions,
    write_classes,
)
from rasterio.crs import CRS

from geoddu.vectorize import vectorize


def test_polygons_are_the_pixels_without_seams(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "out.gpkg"
    result = vectorize(src, out, window_size=WIN)
    assert result.windows == 4 * 5 and out.exists()
    gdf = gpd.read_file(out)
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert set(gdf.columns) == {"class_id", "class_name", "geometry"}
    assert (gdf.geom_type == "Polygon").all() and gdf.is_valid.all()
    assert dict(zip(gdf.class_id, gdf.class_name, strict=True)) == {
        i: NAMES[i] for i in np.unique(cls[cls != 255])
    }

    # Per class: polygon area = pixel count x pixel area, exactly.
    for c in range(5):
        area = gdf.area[gdf.class_id == c].sum()
        assert area == np.count_nonzero(cls == c) * PIXEL**2, c

    # No overlaps (sum of areas = area of the union), no gaps (union = the valid pixels).
    union = shapely.union_all(gdf.geometry.values)
    assert gdf.area.sum() == pytest.approx(union.area, rel=1e-12)
    valid = shapely.union_all(
        [
            shapely.geometry.shape(g)
            for g, _ in rasterio.features.shapes(
                (cls != 255).astype(np.uint8), mask=cls != 255, transform=TRANSFORM
            )
        ]
    )
    assert union.symmetric_difference(valid).area == 0

    # The road crosses 4 x 3 windows: one row, one polygon.
    road = gdf[gdf.class_id == 4]
    assert len(road) == 1 and road.geometry.iloc[0].geom_type == "Polygon"
    assert road.area.iloc[0] == np.count_nonzero(cls == 4) * PIXEL**2

    # Exactly the regions GDAL finds on the whole array at once, vertex for vertex.
    reference = gpd.GeoDataFrame(
        {"class_id": [v for v, _ in pixel_regions(cls)]},
        geometry=[g for _, g in pixel_regions(cls)],
    )
    assert canonical(gdf) == canonical(reference)
    assert result.polygons == len(reference)


def test_region_with_hole_spanning_windows(tmp_path):
    cls = np.zeros((H, W), np.uint8)
    cls[30:170, 40:260] = 1  # a frame of class 1 across many windows...
    cls[50:150, 60:240] = 2  # ...around class 2, with a class-1 island again inside
    cls[90:110, 130:150] = 1
    out = tmp_path / "ring.geojson"
    vectorize(write_classes(tmp_path / "ring.tif", cls), out, window_size=WIN)
    gdf = gpd.read_file(out)
    assert sorted(gdf.class_id) == [0, 1, 1, 2]
    ones = gdf[gdf.class_id == 1]
    frame = ones.geometry.iloc[int(np.argmax(ones.area))]
    assert len(frame.interiors) == 1 and frame.area == (140 * 220 - 100 * 180) * PIXEL**2
    assert gdf.area.sum() == H * W * PIXEL**2


def test_window_size_does_not_change_the_layer(tmp_path):
    src = write_classes(tmp_path / "noisy.tif", blocky(seed=3, noise=0.01))
    layers = []
    for window in (WIN, 97, 1024):
        out = tmp_path / f"w{window}.gpkg"
        vectorize(src, out, window_size=window)
        layers.append(canonical(gpd.read_file(out)))
    assert layers[0] == layers[1] == layers[2]


def test_classes_selects_rows(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "some.fgb"
    result = vectorize(src, out, classes=[1, 4], window_size=WIN)
    gdf = gpd.read_file(out)
    assert set(gdf.class_id) == {1, 4}
    assert set(result.polygons_per_class) == {"urban", "road"}
    urban = sum(1 for v, _ in pixel_regions(cls) if v == 1)
    assert result.polygons_per_class == {"urban": urban, "road": 1} and urban > 1
    assert len(gdf) == urban + 1
    for c in (1, 4):
        assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".json", ".fgb", ".shp"])
def test_formats(tmp_path, classes_tif, suffix):
    src, cls = classes_tif
    out = tmp_path / "out" / f"landcover{suffix}"
    out.parent.mkdir()
    result = vectorize(src, out, window_size=128)
    gdf = gpd.read_file(out)
    assert len(gdf) == result.polygons == len(pixel_regions(cls))
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert gdf.area.sum() == pytest.approx(np.count_nonzero(cls != 255) * PIXEL**2)
    assert np.array_equal(burn(gdf), cls)  # read back, the layer is the class map
    names = sorted(p.name for p in out.parent.iterdir())
    if suffix == ".shp":
        assert names == [f"landcover{e}" for e in (".cpg", ".dbf", ".prj", ".shp", ".shx")]
    else:
        assert names == [out.name]  # no temporary file or folder left behind


def test_tiny_windows_are_seam_free_and_keep_every_class_area(tmp_path):
    cls = blocky(seed=11, noise=0.1)
    src = write_classes(tmp_path / "noisy.tif", cls)
    out = tmp_path / "tiny.gpkg"
    result = vectorize(src, out, window_size=16, batch_size=1000)  # 13 x 19 windows
    assert result.windows == 13 * 19 and result.batches > 1
    gdf = gpd.read_file(out)
    # Same per-class areas as rasterio.features.shapes on the whole map, and the same polygons:
    # no region is split at a window border.
    reference = pixel_regions(cls)
    for c in range(5):
        area = gdf.area[gdf.class_id == c].sum()
        assert area == sum(g.area for v, g in reference if v == c)
        assert area == np.count_nonzero(cls == c) * PIXEL**2
    assert len(gdf) == len(reference)
    assert canonical(gdf) == sorted(
        (v, shapely.to_wkb(shapely.normalize(g))) for v, g in reference
    )
