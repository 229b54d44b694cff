"""`geoddu vectorize` on bad input, cancelled or failing half-way: one error, nothing left.
"""

from __future__ import annotations

from collections import Counter

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from class_maps import EPSG, TRANSFORM, WIN, H, W, blocky, burn, pixel_regions, write_classes

from geoddu.errors import Cancelled, GeodduError
from geoddu.vectorize import vectorize


def test_raster_without_crs(tmp_path):
    src = write_classes(tmp_path / "nocrs.tif", blocky(), crs=None)
    out = tmp_path / "out.gpkg"
    with pytest.raises(GeodduError, match="has no CRS; polygons need one"):
        vectorize(src, out)
    assert list(tmp_path.iterdir()) == [src]


def test_errors_leave_nothing(tmp_path, classes_tif):
    src, _ = classes_tif
    with pytest.raises(GeodduError, match="unknown vector format '.kml'.*\\.gpkg"):
        vectorize(src, tmp_path / "out.kml")
    with pytest.raises(GeodduError, match="no class 7; its classes are 0=water"):
        vectorize(src, tmp_path / "out.gpkg", classes=[1, 7])
    empty = write_classes(tmp_path / "empty.tif", np.full((H, W), 255, np.uint8))
    with pytest.raises(GeodduError, match="no valid pixels"):
        vectorize(empty, tmp_path / "out.gpkg", window_size=WIN)
    # geoddu's own sieve merges every region into its neighbours until none is left of class 4
    # (GDAL's leaves a map whose regions are all below the threshold as it is).
    with pytest.raises(GeodduError, match="no valid pixels of the selected classes"):
        vectorize(src, tmp_path / "out.gpkg", classes=[4], window_size=WIN, min_area=1e9,
                  sieve="smallest-first")
    geographic = write_classes(tmp_path / "geo.tif", blocky(), crs="EPSG:4326")
    with pytest.raises(GeodduError, match="degrees"):
        vectorize(geographic, tmp_path / "out.gpkg", min_area=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "empty.tif", "geo.tif"]


def test_not_a_class_map(tmp_path):
    profile = dict(driver="GTiff", width=W, height=H, crs=f"EPSG:{EPSG}", transform=TRANSFORM)
    floats = tmp_path / "floats.tif"
    with rasterio.open(floats, "w", count=1, dtype="float32", **profile) as ds:
        ds.write(np.zeros((1, H, W), np.float32))
    with pytest.raises(GeodduError, match="float32 values; a class map holds integer"):
        vectorize(floats, tmp_path / "out.gpkg")
    wide = tmp_path / "wide.tif"
    ids = blocky().astype(np.uint16)
    ids[5, 7] = 300
    with rasterio.open(wide, "w", count=1, dtype="uint16", nodata=255, **profile) as ds:
        ds.write(ids, 1)
    with pytest.raises(GeodduError, match="class id 300 at row 5, col 7 is outside 0..254"):
        vectorize(wide, tmp_path / "out.gpkg", window_size=WIN)
    ids[5, 7] = 2  # uint16 ids that fit are fine
    with rasterio.open(wide, "w", count=1, dtype="uint16", nodata=255, **profile) as ds:
        ds.write(ids, 1)
    result = vectorize(wide, tmp_path / "out.gpkg", window_size=WIN)
    assert set(result.polygons_per_class) == {"class 0", "class 1", "class 2", "class 3", "class 4"}
    regions = Counter(f"class {v}" for v, _ in pixel_regions(ids.astype(np.uint8)))
    assert result.polygons_per_class == dict(regions)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["floats.tif", "out.gpkg", "wide.tif"]


def test_overwrite_and_cancel_are_atomic(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "out.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(GeodduError, match="exists; pass --overwrite"):
        vectorize(src, out)
    seen = []

    def cancel() -> bool:
        return len(seen) >= 7  # mid-way through the windows

    with pytest.raises(Cancelled):
        vectorize(
            src,
            out,
            overwrite=True,
            window_size=WIN,
            cancel=cancel,
            progress=lambda stage, done, total: seen.append((stage, done, total)),
        )
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "out.gpkg"]
    seen.clear()
    vectorize(
        src,
        out,
        overwrite=True,
        window_size=WIN,
        min_area=300,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert [s for s in seen if s[1] == s[2]] == [
        ("sieve", 20, 20),
        ("polygonize", 20, 20),
        ("write", 1, 1),
    ]
    # The layer written over the old file is the map sieved at 3 px (300 m^2) by GDAL.
    expected = rasterio.features.sieve(cls, 3, mask=cls != 255, connectivity=4)
    assert np.array_equal(burn(gpd.read_file(out)), expected)


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
