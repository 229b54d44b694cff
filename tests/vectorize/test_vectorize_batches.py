"""Polygons written as they are complete, in batches, in every format: memory bounded by the
open regions, not by the layer.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
from class_maps import EPSG, NAMES, PIXEL, WIN, W, blocky, write_classes
from rasterio.crs import CRS

from geoddu.vectorize import vectorize


def test_polygons_are_written_in_batches_and_memory_does_not_grow_with_the_map(tmp_path):
    """Complete regions leave in batches: the polygons held at once (waiting to be written, or
    pieces of regions still open) stay the same when the map is three times as tall."""
    noisy = blocky(seed=7, noise=0.1)
    results = {}
    for copies in (1, 3):
        cls = np.vstack([noisy] * copies)
        src = write_classes(tmp_path / f"n{copies}.tif", cls)
        out = tmp_path / f"n{copies}.gpkg"
        result = vectorize(src, out, window_size=WIN, batch_size=1000)
        gdf = gpd.read_file(out)
        assert len(gdf) == result.polygons
        for c in range(5):
            assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2
        results[copies] = result
    one, three = results[1], results[3]
    assert three.polygons > 2.9 * one.polygons
    assert three.batches == -(-three.polygons // 1000) and one.batches > 1
    # Bounded by a batch, one window's regions and the open regions, not by the layer.
    assert three.peak_held <= 1000 + WIN * WIN + 2 * W
    assert three.peak_held < 1.2 * one.peak_held
    assert three.peak_held < three.polygons / 5


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".fgb"])
def test_every_format_takes_many_batches(tmp_path, suffix):
    cls = blocky(seed=2, noise=0.05)
    src = write_classes(tmp_path / "noisy.tif", cls)
    out = tmp_path / "out" / f"layer{suffix}"
    out.parent.mkdir()
    result = vectorize(src, out, window_size=WIN, batch_size=400)
    assert result.batches == -(-result.polygons // 400) > 3
    gdf = gpd.read_file(out)
    assert len(gdf) == result.polygons
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert dict(zip(gdf.class_id, gdf.class_name, strict=True)) == {
        i: NAMES[i] for i in np.unique(cls[cls != 255])
    }
    for c in range(5):
        assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2
    suffixes = [".cpg", ".dbf", ".prj", ".shp", ".shx"] if suffix == ".shp" else [suffix]
    assert sorted(p.name for p in out.parent.iterdir()) == [f"layer{e}" for e in suffixes]


@pytest.mark.parametrize("suffix", [".geojson", ".fgb"])
def test_formats_without_gdal_arrow_writes_hold_the_layer(tmp_path, monkeypatch, suffix):
    """Where GDAL lacks the Arrow write (< 3.8), GeoJSON and FlatGeobuf batches are held as
    WKB and written at the end: the same layer as the staged route."""
    import pyogrio.raw

    cls = blocky(seed=2, noise=0.05)
    src = write_classes(tmp_path / "noisy.tif", cls)
    staged = vectorize(src, tmp_path / f"staged{suffix}", window_size=WIN, batch_size=400)
    monkeypatch.setattr(pyogrio.raw, "HAS_ARROW_WRITE_API", False)
    held = vectorize(src, tmp_path / f"held{suffix}", window_size=WIN, batch_size=400)
    assert held.polygons == staged.polygons and held.batches > 3
    a, b = gpd.read_file(tmp_path / f"staged{suffix}"), gpd.read_file(tmp_path / f"held{suffix}")
    assert a.class_id.tolist() == b.class_id.tolist()
    assert shapely.equals_exact(a.geometry.values, b.geometry.values, 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["noisy.tif", f"staged{suffix}", f"held{suffix}"])
