"""Polygons written as they are complete: batches, memory, every format, failures."""

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
    canonical,
    pixel_regions,
    write_classes,
)
from rasterio.crs import CRS

from geoddu.errors import GeodduError
from geoddu.vectorize.polygonize import vectorize

# --- written as it goes ------------------------------------------------------------------------


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


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".fgb"])
def test_failure_after_batches_were_written_leaves_nothing(tmp_path, suffix):
    """A class id out of range in the last window fails the run after several batches are in
    the temporary file: the destination stays as it was and no temporary file is left."""
    ids = blocky(seed=4, noise=0.1).astype(np.uint16)
    ids[H - 3, W - 5] = 300
    profile = dict(
        driver="GTiff", width=W, height=H, count=1, dtype="uint16", nodata=255,
        crs=f"EPSG:{EPSG}", transform=TRANSFORM, tiled=True, blockxsize=64, blockysize=64,
    )  # fmt: skip
    src = tmp_path / "bad.tif"
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(ids, 1)
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"precious")
    written = []

    def progress(stage: str, done: int, total: int) -> None:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        written.append(sum(f.stat().st_size for t in temps for f in t.rglob("*") if f.is_file()))

    with pytest.raises(GeodduError, match="class id 300 at row 197, col 295"):
        vectorize(src, out, overwrite=True, window_size=WIN, batch_size=500, progress=progress)
    assert max(written) > 10_000  # batches had been written
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", out.name]
