"""Windowed reading through geoddu.io.raster, on real files written by rasterio and tifffile."""

from __future__ import annotations

import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from geoddu.errors import GeodduError
from geoddu.io.raster import RasterSource, open_raster

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
H, W = 130, 170  # not multiples of any block size, so edge blocks are partial

# Windows inside, straddling every edge and corner, bigger than the image, and fully outside.
WINDOWS = [
    (0, 0, 32, 32),
    (20, 37, 50, 61),
    (-10, -20, 40, 50),
    (H - 15, W - 25, 40, 50),
    (-5, 100, 30, 200),
    (-7, -9, H + 20, W + 30),
    (H + 5, 0, 10, 10),
    (0, -40, 10, 30),
    (3, 4, 0, 5),
]


def _data(dtype: str, bands: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        return rng.normal(100, 50, (bands, H, W)).astype(dtype)
    info = np.iinfo(dtype)
    # Avoid 0 so that "filled with 0 outside the image" is distinguishable from real data.
    return rng.integers(max(info.min, 1), info.max, (bands, H, W), endpoint=True).astype(dtype)


def _expected(
    full: np.ndarray, row: int, col: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boundless slice of a (bands, H, W) array: zeros and False outside the image."""
    out = np.zeros((full.shape[0], h, w), dtype=full.dtype)
    valid = np.zeros((h, w), dtype=bool)
    r0, r1 = max(row, 0), min(row + h, full.shape[1])
    c0, c1 = max(col, 0), min(col + w, full.shape[2])
    if r0 < r1 and c0 < c1:
        out[:, r0 - row : r1 - row, c0 - col : c1 - col] = full[:, r0:r1, c0:c1]
        valid[r0 - row : r1 - row, c0 - col : c1 - col] = True
    return out, valid


def _assert_windows(src: RasterSource, full: np.ndarray) -> None:
    for window in WINDOWS:
        want, want_valid = _expected(full, *window)
        got = src.read(*window)
        assert got.dtype == full.dtype
        np.testing.assert_array_equal(got, want, err_msg=str(window))
        np.testing.assert_array_equal(src.read_mask(*window), want_valid, err_msg=str(window))
        both, valid = src.read_with_mask(*window)
        np.testing.assert_array_equal(both, want)
        np.testing.assert_array_equal(valid, want_valid)


def _geotiff(path: Path, data: np.ndarray, *, tiled: bool = True, **profile) -> Path:
    opts = dict(
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=CRS_UTM,
        transform=TRANSFORM,
    )
    if tiled:
        opts.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    opts.update(profile)
    with rasterio.open(path, "w", **opts) as dst:
        dst.write(data)
    return path


# --- rasterio backend ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_geotiff_windows_equal_slices(tmp_path: Path, dtype: str, tiled: bool) -> None:
    full = _data(dtype)
    path = _geotiff(tmp_path / "scene.tif", full, tiled=tiled)
    with open_raster(path) as src:
        assert src.backend == "rasterio"
        assert (src.width, src.height, src.count) == (W, H, 3)
        assert src.dtype == np.dtype(dtype)
        assert src.crs == CRS_UTM
        assert src.transform == TRANSFORM
        assert src.nodata is None
        assert src.profile == {"width": W, "height": H, "crs": CRS_UTM, "transform": TRANSFORM}
        if tiled:
            assert src.block_shape == (64, 64)
        else:
            assert src.block_shape[1] == W
        _assert_windows(src, full)


def test_band_selection_is_one_based_and_ordered(tmp_path: Path) -> None:
    full = _data("uint16")
    path = _geotiff(tmp_path / "scene.tif", full)
    with open_raster(path, bands=[3, 1]) as src:
        assert src.count == 2
        assert src.bands == (3, 1)
        np.testing.assert_array_equal(src.read(0, 0, H, W), full[[2, 0]])


@pytest.mark.parametrize("bands", [[0], [4], [1, 7]])
def test_bad_band_names_the_band_count(tmp_path: Path, bands: list[int]) -> None:
    path = _geotiff(tmp_path / "scene.tif", _data("uint8"))
    with pytest.raises(GeodduError, match=r"has 3 bands"):
        open_raster(path, bands=bands)


def test_nodata_follows_gdal_all_bands_not_any_band(tmp_path: Path) -> None:
    # Was "nodata in any selected band invalidates the pixel"; GDAL's rule (the dataset mask
    # gdalinfo and QGIS use) is that a pixel is nodata only where every band is nodata.
    full = _data("uint16")
    full[0, 5, 6] = 0  # nodata in band 1 only: a real pixel
    full[1, 7, 8] = 0  # nodata in band 2 only: a real pixel
    full[:, 9, 10] = 0  # nodata in every band: a hole
    path = _geotiff(tmp_path / "scene.tif", full, nodata=0)
    for bands in (None, [1, 3], [2]):
        with open_raster(path, bands=bands) as src:
            assert src.nodata == 0.0
            mask = src.read_mask(0, 0, H, W)
            assert mask[5, 6] and mask[7, 8] and not mask[9, 10]
            assert mask.sum() == H * W - 1


def _rgb_with_nodata(path: Path, nodata: int) -> tuple[Path, np.ndarray]:
    """An 8-bit RGB scene whose real pixels touch the nodata value in one or two bands."""
    rng = np.random.default_rng(3)
    full = rng.integers(0, 256, (3, H, W), dtype=np.uint8)
    # Many pixels equal nodata in some but not all bands.
    full[rng.random((3, H, W)) < 0.2] = nodata
    full[:, (full == nodata).all(axis=0)] = 7  # no accidental holes
    other = 5 if nodata == 0 else 250
    full[:, 1, 1] = (nodata, other, other)  # e.g. (0, 5, 5)
    full[:, 2, 2] = (other, nodata, nodata)
    full[:, 3, 3] = (nodata, nodata, other)
    if nodata == 255:
        full[:, 4, 4] = (255, 254, 251)
    full[:, 20:30, 40:60] = nodata  # a real hole
    full[:, 60, 70] = nodata  # a one-pixel hole
    return _geotiff(path, full, nodata=nodata), full


@pytest.mark.parametrize("nodata", [0, 255])
@pytest.mark.parametrize("bands", [None, [1, 2, 3], [1], [3, 2], [2, 3]])
def test_mask_is_gdals_dataset_mask(tmp_path: Path, nodata: int, bands: list[int] | None) -> None:
    path, full = _rgb_with_nodata(tmp_path / "rgb.tif", nodata)
    with rasterio.open(path) as ds:
        want = ds.dataset_mask() != 0
    assert want[1, 1] and want[2, 2] and want[3, 3] and want[4, 4]
    assert not want.all() and want.sum() == H * W - 201
    assert not want[20:30, 40:60].any() and not want[60, 70]
    assert (want == (full != nodata).any(axis=0)).all()
    some = (full == nodata).any(axis=0)
    assert (want & some).sum() > 1000  # plenty of real pixels the any-band rule would drop
    with open_raster(path, bands=bands) as src:
        np.testing.assert_array_equal(src.read_mask(0, 0, H, W), want)
        for window in WINDOWS:
            inside, _ = _expected(want[None], *window)
            want_valid = inside[0]
            np.testing.assert_array_equal(src.read_mask(*window), want_valid, err_msg=str(window))
            _, valid = src.read_with_mask(*window)
            np.testing.assert_array_equal(valid, want_valid, err_msg=str(window))


def test_rgb_plus_nir_with_nodata_is_nodata_only_where_all_bands_are(tmp_path: Path) -> None:
    # rasterio's dataset_mask() takes band 4 of a red-first 4-band file for alpha even when
    # GDAL says it is not; GDAL's rule is the OR of the four nodata masks.
    full = _data("uint8", bands=4)
    full[3, 5, 5] = 0  # NIR alone is nodata: a real pixel
    full[:3, 6, 6] = 0  # RGB nodata, NIR real: a real pixel
    full[:, 7, 7] = 0  # a hole
    path = _geotiff(tmp_path / "rgbn.tif", full, nodata=0, photometric="RGB")
    with rasterio.open(path) as ds:
        assert [c.name for c in ds.colorinterp] == ["red", "green", "blue", "undefined"]
    with open_raster(path, bands=[1, 2, 3]) as src:
        assert src.alpha_bands == ()
        mask = src.read_mask(0, 0, H, W)
        assert mask[5, 5] and mask[6, 6] and not mask[7, 7] and mask.sum() == H * W - 1


def test_band_names_and_alpha(tmp_path: Path) -> None:
    rgba = np.concatenate([_data("uint8"), np.full((1, H, W), 255, np.uint8)])
    path = _geotiff(tmp_path / "rgba.tif", rgba, photometric="RGB", alpha="YES")
    with open_raster(path, bands=[1]) as src:
        assert src.total_bands == 4 and src.count == 1
        assert src.alpha_bands == (4,)
        assert src.band_names == ("red", "green", "blue", "alpha")
    path = _geotiff(tmp_path / "plain.tif", _data("uint16", bands=2))
    with rasterio.open(path, "r+") as ds:
        ds.set_band_description(2, "nir")
    with open_raster(path) as src:
        assert src.alpha_bands == () and src.band_names == (None, "nir")


def test_internal_mask_is_honoured(tmp_path: Path) -> None:
    full = _data("uint8")
    path = tmp_path / "masked.tif"
    mask = np.full((H, W), 255, dtype=np.uint8)
    mask[10:20, 30:40] = 0
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=W,
            height=H,
            count=3,
            dtype="uint8",
            crs=CRS_UTM,
            transform=TRANSFORM,
        ) as dst:
            dst.write(full)
            dst.write_mask(mask)
    assert not (tmp_path / "masked.tif.msk").exists()
    with open_raster(path) as src:
        np.testing.assert_array_equal(src.read_mask(0, 0, H, W), mask > 0)
        _, valid = src.read_with_mask(5, 25, 20, 20)
        np.testing.assert_array_equal(valid, mask[5:25, 25:45] > 0)


def test_alpha_band_is_honoured(tmp_path: Path) -> None:
    rgb = _data("uint8")
    alpha = np.full((1, H, W), 255, dtype=np.uint8)
    alpha[0, :10, :] = 0
    path = _geotiff(
        tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES"
    )
    with open_raster(path, bands=[1, 2, 3]) as src:
        mask = src.read_mask(0, 0, H, W)
        assert not mask[:10].any() and mask[10:].all()


def test_nan_is_invalid_in_float_rasters(tmp_path: Path) -> None:
    full = _data("float32")
    full[2, 50, 60] = np.nan
    path = _geotiff(tmp_path / "scene.tif", full)
    with open_raster(path) as src:
        data, valid = src.read_with_mask(40, 50, 20, 20)
        assert np.isnan(data[2, 10, 10])
        assert not valid[10, 10] and valid.sum() == 399
        np.testing.assert_array_equal(src.read_mask(40, 50, 20, 20), valid)


def test_png_without_georeferencing_goes_through_rasterio(tmp_path: Path) -> None:
    full = _data("uint8")
    path = tmp_path / "photo.png"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path, "w", driver="PNG", width=W, height=H, count=3, dtype="uint8"
        ) as dst:
            dst.write(full)
    # Pixel-space images are normal input: no "not georeferenced" warning may reach users.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with open_raster(path) as src:
            assert src.backend == "rasterio"
            assert src.crs is None and src.transform == Affine.identity()
            _assert_windows(src, full)


# --- tifffile backend ------------------------------------------------------------------------


def _tiff(path: Path, data: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, data, **kwargs)
    return path


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize(
    ("name", "kwargs", "backend"),
    [
        ("plain.tif", {}, "tifffile-memmap"),
        ("big.tif", {"bigtiff": True}, "tifffile-memmap"),
        ("tiled.tif", {"tile": (32, 48), "compression": "zlib"}, "tifffile-segments"),
        ("strips.tif", {"rowsperstrip": 16, "compression": "zlib"}, "tifffile-segments"),
        ("tiled_raw.tif", {"tile": (32, 32)}, "tifffile-segments"),
        (
            "big_tiled.btf",
            {"bigtiff": True, "tile": (64, 64), "compression": "zlib"},
            "tifffile-segments",
        ),
    ],
)
def test_plain_tiff_windows_equal_slices(
    tmp_path: Path, dtype: str, name: str, kwargs: dict, backend: str
) -> None:
    full = _data(dtype, bands=1)
    path = _tiff(tmp_path / name, full[0], **kwargs)
    with open_raster(path) as src:
        assert src.backend == backend
        assert (src.width, src.height, src.count, src.dtype) == (W, H, 1, np.dtype(dtype))
        assert src.crs is None and src.nodata is None
        assert src.transform == Affine.identity()
        if "tile" in kwargs:
            assert src.block_shape == kwargs["tile"]
        _assert_windows(src, full)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_ome_tiff_channels_become_bands(tmp_path: Path, compression: str | None) -> None:
    full = _data("uint16", bands=4)
    path = _tiff(
        tmp_path / "cells.ome.tif",
        full,
        ome=True,
        bigtiff=True,
        compression=compression,
        metadata={"axes": "CYX"},
    )
    with open_raster(path) as src:
        assert src.count == 4
        assert src.backend == ("tifffile-memmap" if compression is None else "tifffile-segments")
        _assert_windows(src, full)
    with open_raster(path, bands=[4, 2]) as src:
        np.testing.assert_array_equal(src.read(10, 20, 30, 40), full[[3, 1], 10:40, 20:60])


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_tiff_samples_become_bands(tmp_path: Path, compression: str | None) -> None:
    full = _data("uint8", bands=3)
    contig = _tiff(
        tmp_path / "rgb.tif",
        np.moveaxis(full, 0, -1),
        photometric="rgb",
        compression=compression,
        rowsperstrip=8,
    )
    planar = _tiff(
        tmp_path / "planar.tif",
        full,
        photometric="rgb",
        planarconfig="separate",
        compression=compression,
        rowsperstrip=8,
    )
    for path in (contig, planar):
        with open_raster(path) as src:
            assert src.count == 3
            _assert_windows(src, full)


def test_tiff_with_two_stack_axes_is_refused(tmp_path: Path) -> None:
    data = np.ones((2, 3, 16, 16), dtype=np.uint8)
    path = _tiff(tmp_path / "timelapse.ome.tif", data, ome=True, metadata={"axes": "TCYX"})
    with pytest.raises(GeodduError, match="one band axis"):
        open_raster(path)


def test_window_decodes_only_the_tiles_it_touches(tmp_path: Path) -> None:
    full = _data("uint16", bands=1)
    path = _tiff(tmp_path / "tiled.tif", full[0], tile=(32, 32), compression="zlib")
    # Corrupt the last tile: a reader that decoded the whole image would fail on any window.
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * count)
    with open_raster(path) as src:
        assert src.backend == "tifffile-segments"
        np.testing.assert_array_equal(src.read(0, 0, 64, 64), full[:, :64, :64])
        with pytest.raises(GeodduError, match="cannot decode"):
            src.read(H - 5, W - 5, 5, 5)


def test_memmap_backend_reads_lazily(tmp_path: Path) -> None:
    full = _data("uint16", bands=1)
    path = _tiff(tmp_path / "plain.tif", full[0])
    with open_raster(path) as src:
        assert src.backend == "tifffile-memmap"
        assert isinstance(src._backend._array.base, np.memmap)  # a view, nothing read yet


# --- errors and handles ----------------------------------------------------------------------


def test_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "scene.tif"
    path.write_text("definitely not pixels\n")
    with pytest.raises(GeodduError, match=r"scene\.tif: not a raster GDAL or tifffile can open"):
        open_raster(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GeodduError, match="no such file"):
        open_raster(tmp_path / "nope.tif")


@pytest.mark.parametrize("kind", ["geotiff", "tiff"])
def test_reopen_gives_an_independent_handle(tmp_path: Path, kind: str) -> None:
    full = _data("uint16")
    if kind == "geotiff":
        path = _geotiff(tmp_path / "scene.tif", full)
    else:
        # Three minisblack pages: the pages-as-bands layout.
        path = _tiff(
            tmp_path / "scene.tif",
            full,
            tile=(32, 32),
            compression="zlib",
            photometric="minisblack",
        )
    src = open_raster(path, bands=[2, 3])
    other = src.reopen()
    assert other is not src and other._backend is not src._backend
    assert (other.bands, other.backend) == (src.bands, src.backend)
    src.close()
    assert src.closed and not other.closed
    with pytest.raises(ValueError, match="closed"):
        src.read(0, 0, 1, 1)
    np.testing.assert_array_equal(other.read(5, 6, 20, 30), full[1:, 5:25, 6:36])
    # Pickling (DataLoader workers) reopens too.
    clone = pickle.loads(pickle.dumps(other))
    np.testing.assert_array_equal(clone.read(-3, 0, 10, 10), other.read(-3, 0, 10, 10))
    other.close()
    clone.close()


def test_raster_module_does_not_import_torch() -> None:
    import subprocess

    # Only what the I/O modules themselves pull in is checked, whatever the package inits do.
    code = (
        "import sys, geoddu, geoddu.io; before = 'torch' in sys.modules; "
        "import geoddu.io.raster, geoddu.io.writer; "
        "print(not before and 'torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr
