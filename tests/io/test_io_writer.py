"""Atomic GeoTIFF outputs from geoddu.io.writer, checked by reading them back with rasterio."""

from __future__ import annotations

import json
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Compression

from geoddu.errors import GeodduError
from geoddu.io.raster import open_raster
from geoddu.io.writer import (
    UINT8_NODATA,
    ClassMapWriter,
    FloatRasterWriter,
    UInt8RasterWriter,
    overview_factors,
    probability_writer,
)

CRS_UTM = CRS.from_epsg(32633)
TRANSFORM = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 4000000.0)
W, H = 700, 600  # > 512 on both sides: several tiles and one overview level
NAMES = ["water", "urban", "forest"]
COLORS = [(0, 0, 255), (200, 30, 30), (20, 160, 40)]
# A finished class map: the GeoTIFF and its PAM sidecar (category names, attribute table).
DONE = ["landcover.tif", "landcover.tif.aux.xml"]


def _class_writer(path: Path, **kwargs) -> ClassMapWriter:
    args = dict(
        width=W,
        height=H,
        crs=CRS_UTM,
        transform=TRANSFORM,
        class_names=NAMES,
        class_colors=COLORS,
    )
    args.update(kwargs)
    return ClassMapWriter(path, **args)


def _classes(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, len(NAMES), (h, w)).astype(np.uint8)


def _write_class_map(path: Path, **kwargs) -> np.ndarray:
    """Writes the whole map in 256x256 windows, the last ones hanging past the edges."""
    expected = _classes(H, W)
    with _class_writer(path, **kwargs) as writer:
        for row in range(0, H, 256):
            for col in range(0, W, 256):
                window = np.full((256, 256), 7, dtype=np.uint8)  # 7: junk past the edge
                part = expected[row : row + 256, col : col + 256]
                window[: part.shape[0], : part.shape[1]] = part
                writer.write(window, row, col)
    return expected


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_class_map_is_a_complete_georeferenced_geotiff(tmp_path: Path, cog: bool) -> None:
    path = tmp_path / "landcover.tif"
    expected = _write_class_map(path, cog=cog)
    assert _only(tmp_path) == DONE  # no temp file; GDAL's PAM sidecar beside the map
    with rasterio.open(path) as src:
        assert (src.width, src.height, src.count) == (W, H, 1)
        assert src.crs == CRS_UTM
        assert src.transform == TRANSFORM
        assert src.dtypes == ("uint8",)
        assert src.nodata == 255
        assert src.block_shapes == [(512, 512)]
        assert src.profile["tiled"]
        assert src.compression == Compression.deflate
        assert src.descriptions == ("class",)
        colormap = src.colormap(1)
        assert [colormap[i][:3] for i in range(len(COLORS))] == COLORS
        assert colormap[0][3] == 255
        assert colormap[255] == (0, 0, 0, 0)
        tags = src.tags()
        assert json.loads(tags["CLASS_NAMES"]) == NAMES
        assert [tags[f"CLASS_{i}"] for i in range(len(NAMES))] == NAMES
        assert src.overviews(1) == [2]
        np.testing.assert_array_equal(src.read(1), expected)
        layout = src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT")
        assert (layout == "COG") == cog
        # GDAL read the sidecar as the file's PAM (and still sees tags and colour table).
        assert str(path) + ".aux.xml" in src.files
    assert_pam_class_names(path, NAMES, COLORS)


def assert_pam_class_names(path: Path, names: list[str], colors: list[tuple]) -> None:
    """The sidecar holds band 1's category names and a thematic RAT with GDAL's field usages."""
    root = ET.parse(str(path) + ".aux.xml").getroot()
    assert root.tag == "PAMDataset"
    (band,) = root.findall("PAMRasterBand")
    assert band.get("band") == "1"
    assert [c.text or "" for c in band.find("CategoryNames")] == names  # nothing for 255
    rat = band.find("GDALRasterAttributeTable")
    assert rat.get("tableType") == "thematic"
    fields = [(f.findtext("Name"), f.findtext("Type"), f.findtext("Usage"))
              for f in rat.findall("FieldDefn")]
    # GFT_Integer 0 / GFT_String 2; GFU_MinMax 5, Name 2, Red 6, Green 7, Blue 8, Alpha 9
    assert fields == [("Value", "0", "5"), ("Class_Name", "2", "2"), ("Red", "0", "6"),
                      ("Green", "0", "7"), ("Blue", "0", "8"), ("Alpha", "0", "9")]
    rows = [[f.text or "" for f in row.findall("F")] for row in rat.findall("Row")]
    assert rows == [[str(i), name, *(str(v) for v in color), "255"]
                    for i, (name, color) in enumerate(zip(names, colors, strict=True))]


def test_class_names_survive_xml_special_characters(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    names = ['water & "ice"', "<urban>", "forêt 森林"]
    with _class_writer(path, class_names=names) as writer:
        writer.write(_classes(H, W), 0, 0)
    assert_pam_class_names(path, names, COLORS)
    with rasterio.open(path) as src:  # GDAL accepts the sidecar: the tags still read
        assert json.loads(src.tags()["CLASS_NAMES"]) == names
        assert src.colormap(1)[1][:3] == COLORS[1]


def test_overwrite_replaces_the_sidecar_and_removes_a_stale_one(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    sidecar = tmp_path / "landcover.tif.aux.xml"
    _write_class_map(path)
    with _class_writer(path, overwrite=True, class_names=["a", "b", "c"]) as writer:
        writer.write(_classes(H, W), 0, 0)
    assert _only(tmp_path) == DONE
    assert_pam_class_names(path, ["a", "b", "c"], COLORS)
    # A float raster written over a class map must not inherit its categories.
    with FloatRasterWriter(path, width=8, height=8, crs=None, transform=None,
                           band_descriptions=["p"], overwrite=True) as writer:
        writer.write(np.zeros((8, 8), np.float32), 0, 0)
    assert _only(tmp_path) == ["landcover.tif"]
    # A failed overwrite keeps the old map with its own sidecar.
    _write_class_map(path, overwrite=True)
    before = sidecar.read_bytes()
    with pytest.raises(RuntimeError), _class_writer(path, overwrite=True,
                                                    class_names=["x", "y", "z"]) as writer:
        writer.write(_classes(H, W), 0, 0)
        raise RuntimeError("model crashed")
    assert sidecar.read_bytes() == before and _only(tmp_path) == DONE


def test_unwritten_areas_are_nodata_and_windows_are_clipped(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    with _class_writer(path) as writer:
        writer.write(np.ones((100, 100), dtype=np.int64), -50, -60)  # int64 is cast
        writer.write(np.full((100, 100), 2, dtype=np.uint8), H - 30, W - 40)
        writer.write(np.zeros((10, 10), dtype=np.uint8), H + 10, 0)  # fully outside: ignored
    with rasterio.open(path) as src:
        data = src.read(1)
    assert (data[:50, :40] == 1).all()
    assert (data[H - 30 :, W - 40 :] == 2).all()
    assert (data == 255).sum() == H * W - 50 * 40 - 30 * 40


def test_bad_class_values_are_refused(tmp_path: Path) -> None:
    with _class_writer(tmp_path / "landcover.tif") as writer:
        with pytest.raises(ValueError, match="0..255"):
            writer.write(np.full((4, 4), 300, dtype=np.int32), 0, 0)
        with pytest.raises(TypeError):
            writer.write(np.zeros((4, 4), dtype=np.float32), 0, 0)


def test_output_appears_only_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    with _class_writer(path) as writer:
        writer.write(_classes(64, 64), 0, 0)
        assert not path.exists()
        (temp,) = tmp_path.iterdir()
        assert temp.name.startswith(".landcover.tif.geoddu-tmp-")
    assert _only(tmp_path) == DONE


@pytest.mark.parametrize("exc_type", [RuntimeError, KeyboardInterrupt])
@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_exception_leaves_no_output_and_no_temp(
    tmp_path: Path, exc_type: type[BaseException], cog: bool
) -> None:
    path = tmp_path / "landcover.tif"
    with pytest.raises(exc_type):
        with _class_writer(path, cog=cog) as writer:
            writer.write(_classes(H, W), 0, 0)
            raise exc_type()
    assert _only(tmp_path) == []


def test_exception_with_overwrite_keeps_the_old_output(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    path.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with _class_writer(path, overwrite=True) as writer:
            writer.write(_classes(H, W), 0, 0)
            raise RuntimeError("model crashed")
    assert path.read_bytes() == b"previous result"
    assert _only(tmp_path) == ["landcover.tif"]


def test_abort_discards(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    with _class_writer(path) as writer:
        writer.write(_classes(H, W), 0, 0)
        writer.abort()
        with pytest.raises(ValueError):
            writer.write(_classes(4, 4), 0, 0)
    assert _only(tmp_path) == []


def test_abort_after_success_keeps_the_output(tmp_path: Path) -> None:
    # A caller cleaning up several writers after a later one failed may abort finished ones.
    path = tmp_path / "landcover.tif"
    writer = _class_writer(path)
    writer.write(_classes(H, W), 0, 0)
    writer.close()
    writer.abort()
    assert _only(tmp_path) == DONE
    with rasterio.open(path) as src:
        assert src.count == 1


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    path.write_bytes(b"previous result")
    with pytest.raises(GeodduError, match=r"landcover\.tif exists; pass --overwrite to replace it"):
        _class_writer(path)
    assert path.read_bytes() == b"previous result"
    assert _only(tmp_path) == ["landcover.tif"]

    expected = _write_class_map(path, overwrite=True)
    with rasterio.open(path) as src:
        np.testing.assert_array_equal(src.read(1), expected)
    assert _only(tmp_path) == DONE


def test_output_created_meanwhile_is_not_clobbered(tmp_path: Path) -> None:
    path = tmp_path / "landcover.tif"
    with pytest.raises(GeodduError, match="exists"):
        with _class_writer(path) as writer:
            writer.write(_classes(H, W), 0, 0)
            path.write_bytes(b"another run finished first")
    assert path.read_bytes() == b"another run finished first"
    assert _only(tmp_path) == ["landcover.tif"]


def test_missing_output_directory(tmp_path: Path) -> None:
    with pytest.raises(GeodduError, match="output directory does not exist"):
        _class_writer(tmp_path / "nope" / "landcover.tif")


def test_class_names_and_colours_must_match(tmp_path: Path) -> None:
    with pytest.raises(GeodduError, match="3 class names but 2 class colours"):
        _class_writer(tmp_path / "landcover.tif", class_colors=COLORS[:2])
    assert _only(tmp_path) == []


@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_float_raster_round_trip_without_georeferencing(tmp_path: Path, cog: bool) -> None:
    path = tmp_path / "probabilities.tif"
    rng = np.random.default_rng(1)
    probs = rng.random((3, H, W), dtype=np.float32)
    # A pixel-space output (tifffile input): no NotGeoreferencedWarning may reach users.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with FloatRasterWriter(
            path,
            width=W,
            height=H,
            crs=None,
            transform=Affine.identity(),
            band_descriptions=NAMES,
            cog=cog,
        ) as writer:
            writer.write(probs[:, :300], 0, 0)
            writer.write(probs[:, 300:500], 300, 0)  # rows 500.. never written -> NaN
        with open_raster(path) as src:
            assert src.backend == "rasterio"  # NaN nodata makes GDAL the right reader
            assert src.crs is None and src.transform == Affine.identity()
            data, valid = src.read_with_mask(0, 0, H, W)
    assert _only(tmp_path) == ["probabilities.tif"]
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data[:, :500], probs[:, :500])
    assert np.isnan(data[:, 500:]).all()
    assert valid[:500].all() and not valid[500:].any()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as src:
            assert src.descriptions == tuple(NAMES)
            assert np.isnan(src.nodata)
            assert src.block_shapes == [(512, 512)] * 3
            assert src.compression == Compression.deflate
            assert src.overviews(1) == [2]


def test_float_raster_single_band_accepts_2d(tmp_path: Path) -> None:
    path = tmp_path / "confidence.tif"
    conf = np.linspace(0, 1, H * W, dtype=np.float32).reshape(H, W)
    with FloatRasterWriter(
        path, width=W, height=H, crs=CRS_UTM, transform=TRANSFORM, band_descriptions=["confidence"]
    ) as writer:
        writer.write(conf, 0, 0)
    with rasterio.open(path) as src:
        assert src.crs == CRS_UTM and src.descriptions == ("confidence",)
        np.testing.assert_array_equal(src.read(1), conf)


def test_overview_factors() -> None:
    assert overview_factors(300, 300) == []
    assert overview_factors(512, 100) == [2]
    assert overview_factors(40000, 30000) == [2, 4, 8, 16, 32, 64, 128]


@pytest.mark.parametrize("cog", [False, True], ids=["gtiff", "cog"])
def test_uint8_probabilities_are_scaled_with_gdal_scale(tmp_path: Path, cog: bool) -> None:
    probs = np.random.default_rng(2).random((3, H, W), dtype=np.float32)
    probs[:, :, :7] = np.nan
    probs[0, 0, 10:13] = [0.0, 1.0, 0.5]
    path = tmp_path / "p8.tif"
    with probability_writer(path, dtype="uint8", width=W, height=H, crs=CRS_UTM,
                            transform=TRANSFORM, band_descriptions=NAMES, cog=cog) as writer:
        assert isinstance(writer, UInt8RasterWriter)
        writer.write(probs, 0, 0)
    assert _only(tmp_path) == ["p8.tif"]
    with rasterio.open(path) as src:
        assert src.dtypes == ("uint8",) * 3 and src.nodata == UINT8_NODATA
        assert src.scales == (1 / 254,) * 3 and src.offsets == (0.0,) * 3
        assert src.descriptions == tuple(NAMES)
        data = src.read()
        valid = src.dataset_mask() > 0
    assert data[0, 0, 10:13].tolist() == [0, 254, 127]
    assert (data[:, :, :7] == UINT8_NODATA).all() and not valid[:, :7].any()
    assert valid[:, 7:].all() and data[:, :, 7:].max() <= 254
    error = np.abs(data[:, :, 7:] * (1 / 254) - probs[:, :, 7:])
    assert error.max() <= 0.5 / 254 + 1e-6


def test_unknown_probabilities_dtype_is_refused(tmp_path: Path) -> None:
    with pytest.raises(GeodduError, match="float16"):
        probability_writer(tmp_path / "p.tif", dtype="float16", width=8, height=8, crs=None,
                           transform=None, band_descriptions=["p"])
    assert _only(tmp_path) == []


def test_outputs_renamed_together_take_their_sidecars_back(tmp_path: Path) -> None:
    from geoddu.io.writer import commit_all

    first, second = _class_writer(tmp_path / "a.tif"), _class_writer(tmp_path / "b.tif")
    for writer in (first, second):
        writer.write(_classes(H, W), 0, 0)
        writer.finish()
    (tmp_path / "b.tif").write_bytes(b"another run finished first")
    with pytest.raises(GeodduError, match="exists"):
        commit_all([first.output, second.output])
    assert _only(tmp_path) == ["b.tif"]
