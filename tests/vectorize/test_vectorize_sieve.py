"""`--min-area`: by default GDAL's sieve (``rasterio.features.sieve``, ``GDALSieveFilter``) of
the whole map, whatever the windows, the input's type or nodata; its scratch files are gone
after the run, also when it fails."""

from __future__ import annotations

import subprocess

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from class_maps import (
    EPSG,
    PIXEL,
    TRANSFORM,
    WIN,
    H,
    W,
    blocky,
    burn,
    canonical,
    cells,
    region_sizes,
    write_classes,
)

import geoddu.vectorize.sieve_gdal as sieve_gdal
from geoddu.errors import Cancelled, GeodduError
from geoddu.vectorize import SIEVES, vectorize


@pytest.mark.parametrize("sieve", SIEVES)
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
    assert result.sieve == sieve
    gdf = gpd.read_file(out)
    assert sorted(gdf.class_id) == [0, 2, 3, 3]
    assert sorted(gdf.area[gdf.class_id == 3] / PIXEL**2) == [10, 11]
    assert gdf.area.sum() == (H * W - 4) * PIXEL**2

    # Here every small region lies in a single larger one: both sieves give GDAL's sieve of
    # the whole array.
    expected = rasterio.features.sieve(cls, 10, mask=cls != 255, connectivity=4)
    assert np.array_equal(burn(gdf), expected)


@pytest.mark.parametrize(
    ("name", "cls", "threshold"),
    [
        ("blocks", blocky(seed=5, noise=0.05), 12),
        ("speckled", blocky(seed=7, noise=0.1), 5),
        ("cells", cells(seed=1), 10),  # GDAL leaves groups of small regions here
    ],
)
@pytest.mark.parametrize("window", [WIN, 97, 1024])
def test_default_sieve_is_gdals_sieve_of_the_whole_array(tmp_path, name, cls, threshold, window):
    src = write_classes(tmp_path / f"{name}.tif", cls)
    out = tmp_path / "sieved.gpkg"
    result = vectorize(src, out, min_area=threshold * PIXEL**2, window_size=window)
    expected = rasterio.features.sieve(cls, threshold, mask=cls != 255, connectivity=4)
    assert result.sieve == "gdal" and result.min_area_pixels == threshold
    assert result.sieved_pixels == np.count_nonzero(expected != cls) > 0
    gdf = gpd.read_file(out)
    assert np.array_equal(burn(gdf), expected)
    assert len(gdf) == len(region_sizes(expected))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])


def test_default_sieve_of_a_16_bit_map_with_its_own_nodata(tmp_path):
    """Nodata 0 and classes 1..4 in uint16: GDAL's sieve of the array with the file's mask."""
    cls = blocky(seed=3, noise=0.08).astype(np.uint16) + 1
    cls[cls == 256] = 0  # the nodata patch
    src = tmp_path / "wide.tif"
    profile = dict(driver="GTiff", width=W, height=H, count=1, dtype="uint16", nodata=0,
                   crs=f"EPSG:{EPSG}", transform=TRANSFORM)  # fmt: skip
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(cls, 1)
    result = vectorize(src, tmp_path / "out.gpkg", min_area=6 * PIXEL**2, window_size=WIN)
    expected = rasterio.features.sieve(cls, 6, mask=cls != 0, connectivity=4)
    assert result.sieved_pixels == np.count_nonzero(expected != cls) > 0
    want = np.where(expected == 0, 255, expected).astype(np.uint8)
    assert np.array_equal(burn(gpd.read_file(tmp_path / "out.gpkg")), want)


def test_threshold_above_the_map_changes_nothing(tmp_path, classes_tif):
    """No region reaches a threshold larger than the map, so GDAL merges none of them."""
    src, cls = classes_tif
    plain = vectorize(src, tmp_path / "plain.gpkg", window_size=WIN)
    sieved = vectorize(src, tmp_path / "sieved.gpkg", min_area=1e9, window_size=WIN)
    assert sieved.min_area_pixels == 10**7 and sieved.sieved_pixels == 0
    assert canonical(gpd.read_file(sieved.output)) == canonical(gpd.read_file(plain.output))


def test_cancelled_or_failed_sieve_leaves_nothing(tmp_path, classes_tif, monkeypatch):
    src, _ = classes_tif
    out = tmp_path / "out.gpkg"
    seen = []
    with pytest.raises(Cancelled):
        vectorize(src, out, min_area=500, window_size=WIN, cancel=lambda: len(seen) >= 3,
                  progress=lambda *report: seen.append(report))
    assert seen == [("sieve", 1, 20), ("sieve", 2, 20), ("sieve", 3, 20)]

    def gdal_fails(*args, **kwargs):
        raise rasterio.errors.RasterioError("Failed to read scanline 7")

    monkeypatch.setattr(sieve_gdal.rasterio.features, "sieve", gdal_fails)
    with pytest.raises(GeodduError, match=r"^writing .*out\.gpkg failed: Failed to read scanline"):
        vectorize(src, out, min_area=500, window_size=WIN)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif"]


def test_disk_full_for_the_scratch_copy_is_one_line(tmp_path):
    """The scratch copies are reserved before they are written: a full disk is an error, not a
    crash (a mapped page with no room on the disk would kill the process)."""
    cls = np.zeros((1000, 1000), np.uint8)  # 1 MB a copy, two regions: a small layer
    cls[:, 500:] = 1
    src = write_classes(tmp_path / "halves.tif", cls)
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(small)],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        with pytest.raises(GeodduError, match=r"^no space left on device writing .*out\.gpkg"):
            vectorize(src, small / "out.gpkg", min_area=500)
        assert list(small.iterdir()) == []
        vectorize(src, small / "out.gpkg")  # without the sieve it fits
        assert [p.name for p in small.iterdir()] == ["out.gpkg"]
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)
