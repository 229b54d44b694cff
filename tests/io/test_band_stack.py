"""Bands in separate files as one scene (geoddu.io.band_stack, geoddu.io.stac): the stack is
GDAL's (grid of the first file, GDAL's resampling, GDAL's dataset mask), and segmenting it gives
exactly the classes of the same bands stacked into one file beforehand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from band_helpers import (
    ALL_NODATA,
    HEIGHT,
    WIDTH,
    local_http_env,
    range_server,
    scene_bands,
    split_bands,
    stac_item,
    write_band,
)
from helpers import make_checkpoint
from rasterio.enums import Resampling

import geoddu
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError
from geoddu.io.band_stack import RESAMPLINGS, BandRef, band_stack, gdal_path
from geoddu.io.raster import open_raster
from geoddu.io.stac import stac_bands

# geoddu's method names as rasterio's Resampling enum spells them.
RASTERIO_NAME = {"cubicspline": "cubic_spline"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return geoddu.load_model(make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt"))


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".geoddu-tmp-" in p.name)


def _gdal_resampled(path: Path, method: str) -> np.ndarray:
    """Band 1 of ``path`` read by GDAL onto the scene's grid with ``method``."""
    with rasterio.open(path) as ds:
        return ds.read(1, out_shape=(HEIGHT, WIDTH),
                       resampling=Resampling[RASTERIO_NAME.get(method, method)])


def test_band_files_segment_as_the_same_bands_in_one_file(tmp_path, model):
    """Three files give the classes of one 3-band file, 0 px apart, nodata (every band 0)
    included, on two devices too; the order given is the band order; nothing is left beside
    the output."""
    data = scene_bands()
    scene = write_band(tmp_path / "scene.tif", data, nodata=0)
    files = split_bands(tmp_path, data, ["B1.tif", "B2.tif", "B3.tif"])
    expected = geoddu.segment(scene, tmp_path / "one.tif", model)
    # Two devices: two reader threads, each with its own handle on the VRT and its files.
    result = geoddu.segment(None, tmp_path / "stack.tif", model, band_files=files,
                            device="cpu,cpu")
    assert (result.width, result.height) == (WIDTH, HEIGHT)
    one, stack = _classes(tmp_path / "one.tif"), _classes(tmp_path / "stack.tif")
    np.testing.assert_array_equal(stack, one)
    assert (stack[ALL_NODATA] == 255).all() and (stack != 255).sum() == stack.size - 20 * 30
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "stack.tif") as b:
        assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
    assert expected.subimages == result.subimages
    geoddu.segment(None, tmp_path / "reversed.tif", model, band_files=files[::-1])
    assert (_classes(tmp_path / "reversed.tif") != one).any()
    assert _leftovers(tmp_path) == []


def test_a_half_resolution_band_is_gdals_resampled_read(tmp_path, model):
    """Band 2 at 20 m is resampled onto the 10 m grid as GDAL reads it (bilinear by default):
    the classes equal those of a stack made beforehand with rasterio, 0 px apart."""
    data = scene_bands()
    coarse = data[1, ::2, ::2].copy()
    files = [write_band(tmp_path / "B1.tif", data[0], nodata=0),
             write_band(tmp_path / "B2_20m.tif", coarse, 20.0, nodata=0),
             write_band(tmp_path / "B3.tif", data[2], nodata=0)]
    for method in ("bilinear", "nearest"):
        prepared = data.copy()
        prepared[1] = _gdal_resampled(files[1], method)
        scene = write_band(tmp_path / f"prepared-{method}.tif", prepared, nodata=0)
        options = {} if method == "bilinear" else {"band_resampling": method}
        geoddu.segment(None, tmp_path / f"stack-{method}.tif", model, band_files=files, **options)
        geoddu.segment(scene, tmp_path / f"one-{method}.tif", model)
        np.testing.assert_array_equal(_classes(tmp_path / f"stack-{method}.tif"),
                                      _classes(tmp_path / f"one-{method}.tif"))
    # The method reaches GDAL: the two maps are not the same.
    assert (_classes(tmp_path / "stack-bilinear.tif") != _classes(tmp_path / "stack-nearest.tif")
            ).any()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("method", RESAMPLINGS)
def test_windows_of_the_stack_are_the_whole_resampled_read(tmp_path, method):
    """Whatever windows the engine reads, each method gives the pixels of GDAL's resampled
    read of the whole band (20 m and 60 m bands on a 10 m grid, windows of odd sizes)."""
    rng = np.random.default_rng(1)
    first = write_band(tmp_path / "b10.tif", rng.integers(0, 4000, (HEIGHT, WIDTH), np.uint16))
    b20 = write_band(tmp_path / "b20.tif", rng.integers(0, 4000, (75, 103), np.uint16), 20.0)
    b60 = write_band(tmp_path / "b60.tif", rng.integers(0, 4000, (25, 35), np.uint16), 60.0)
    # 35 px of 60 m are 210 px of 10 m: more than the first band, cut to its grid.
    want = [_gdal_resampled(first, method), _gdal_resampled(b20, method)]
    with rasterio.open(b60) as ds:
        want.append(ds.read(1, out_shape=(HEIGHT, 210), resampling=Resampling[
            RASTERIO_NAME.get(method, method)])[:, :WIDTH])
    with band_stack([BandRef(str(p)) for p in (first, b20, b60)], method) as vrt, \
            open_raster(vrt) as source:
        for step in (17, 32, 45):
            got = np.zeros((3, HEIGHT, WIDTH), np.uint16)
            for r in range(0, HEIGHT, step):
                for c in range(0, WIDTH, step):
                    got[:, r:r + step, c:c + step] = source.read(r, c, step, step)[
                        :, :HEIGHT - r, :WIDTH - c]
            np.testing.assert_array_equal(got, np.stack(want), err_msg=f"windows of {step}")


def test_nodata_and_masks_follow_gdals_dataset_mask(tmp_path):
    """Each band keeps its file's nodata value or mask; the stack's pixel is nodata where every
    band is (GDAL's dataset mask of the VRT), whatever read it: rasterio or geoddu."""
    rng = np.random.default_rng(2)
    mask = np.full((HEIGHT, WIDTH), 255, np.uint8)
    mask[:40, :60] = 0
    b1 = write_band(tmp_path / "masked.tif", rng.integers(1, 255, (HEIGHT, WIDTH), np.uint8),
                    mask=mask)
    coarse = rng.integers(1, 255, (75, 103), np.uint8)
    coarse[:15, :20] = 0
    b2 = write_band(tmp_path / "coarse.tif", coarse, 20.0, nodata=0)
    fine = rng.integers(1, 255, (HEIGHT, WIDTH), np.uint8)
    fine[:40, :50] = 0
    b3 = write_band(tmp_path / "fine.tif", fine, nodata=0)
    valid = (mask != 0) | (_gdal_resampled(b2, "bilinear") != 0) | (fine != 0)
    assert 0 < (~valid).sum() < 40 * 50  # some pixels invalid in every band, not all of any
    with band_stack([BandRef(str(p)) for p in (b1, b2, b3)]) as vrt:
        with rasterio.open(vrt) as ds:
            np.testing.assert_array_equal(ds.dataset_mask() != 0, valid)
            assert ds.nodatavals == (None, 0.0, 0.0)
            assert ds.descriptions == ("masked.tif", "coarse.tif", "fine.tif")
        with open_raster(vrt) as source:
            np.testing.assert_array_equal(source.read_mask(0, 0, HEIGHT, WIDTH), valid)


def test_stack_refuses_what_it_cannot_stack(tmp_path):
    """Another CRS, a band that does not cover the first, a missing or unreadable file: one
    line each, naming the band."""
    data = np.ones((HEIGHT, WIDTH), np.uint8)
    first = write_band(tmp_path / "a.tif", data)
    other_crs = write_band(tmp_path / "utm32.tif", data, crs="EPSG:32632")
    smaller = write_band(tmp_path / "small.tif", data[:100])
    (tmp_path / "text.tif").write_text("not a raster")
    for files, needle in [
        ((first, other_crs), "is in EPSG:32632, but the first band"),
        ((first, smaller), "does not cover the extent of the first band"),
        ((first, tmp_path / "none.tif"), "none.tif: no such file"),
        ((first, tmp_path / "text.tif"), "text.tif: cannot be read as a raster"),
    ]:
        with pytest.raises(GeodduError, match=needle) as err:
            with band_stack([BandRef(str(p)) for p in files], beside=tmp_path / "o.tif"):
                pass
        assert "\n" not in str(err.value)
    assert _leftovers(tmp_path) == [] and not (tmp_path / "o.tif").exists()


def test_stac_assets_by_key_or_band_name_relative_to_the_item(tmp_path):
    (tmp_path / "item").mkdir()
    item = stac_item(tmp_path / "item" / "item.json", {
        "B04": ("../data/B04.tif", "red"), "B03": ("B03.tif", "green"),
        "B02": ("https://example.com/s2/B02.tif", "blue"),
    })
    refs = stac_bands(str(item), ["red", "B03", "blue"])
    assert [r.asset for r in refs] == ["B04", "B03", "B02"]
    assert [r.path for r in refs] == [str(tmp_path / "data" / "B04.tif"),
                                      str(tmp_path / "item" / "B03.tif"),
                                      "https://example.com/s2/B02.tif"]
    assert gdal_path(refs[2].path) == "/vsicurl/https://example.com/s2/B02.tif"
    assert gdal_path("s3://bucket/B02.tif") == "/vsis3/bucket/B02.tif"
    with pytest.raises(GeodduError, match=r"--assets nir: .* no asset or band of that name; "
                                          r"its assets: B04, B03, B02, thumbnail"):
        stac_bands(str(item), ["red", "nir"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GeodduError, match="not valid JSON"):
        stac_bands(str(tmp_path / "bad.json"), ["red"])


def test_stac_item_over_http_is_read_in_byte_ranges(tmp_path, model, monkeypatch):
    """A STAC item and its COGs behind a local HTTP server: GDAL reads them through /vsicurl/
    in byte ranges, and the map is the local file's; an HTTP error is one line."""
    for name, value in local_http_env().items():
        monkeypatch.setenv(name, value)
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    data = scene_bands()
    scene = write_band(tmp_path / "scene.tif", data, nodata=0)
    served = tmp_path / "served"
    served.mkdir()
    split_bands(served, data, ["B04.tif", "B03.tif", "B02.tif"], cog=True)
    stac_item(served / "item.json", {"B04": ("./B04.tif", "red"), "B03": ("B03.tif", "green"),
                                     "B02": ("B02.tif", "blue"), "B01": ("gone.tif", "coastal")})
    geoddu.segment(scene, tmp_path / "local.tif", model)
    with range_server(served) as (url, log):
        geoddu.segment(None, tmp_path / "remote.tif", model, stac=f"{url}/item.json",
                       assets=["red", "green", "blue"])
        ranged = [path for method, path, rng in log if method == "GET" and rng]
        assert {"/B04.tif", "/B03.tif", "/B02.tif"} <= set(ranged)
        np.testing.assert_array_equal(_classes(tmp_path / "remote.tif"),
                                      _classes(tmp_path / "local.tif"))
        with pytest.raises(GeodduError, match=r"--stac .*/nothing\.json: HTTP 404"):
            geoddu.segment(None, tmp_path / "x.tif", model, stac=f"{url}/nothing.json",
                           assets=["red"])
        with pytest.raises(GeodduError, match=r"STAC asset 'B01' \(http.*/gone\.tif\): cannot "
                                              r"be read as a raster"):
            geoddu.segment(None, tmp_path / "x.tif", model, stac=f"{url}/item.json",
                           assets=["red", "green", "coastal"])
    assert not (tmp_path / "x.tif").exists() and _leftovers(tmp_path) == []


def test_the_plan_of_band_files_writes_nothing(tmp_path, model):
    files = split_bands(tmp_path, scene_bands(), ["B1.tif", "B2.tif", "B3.tif"])
    before = sorted(tmp_path.iterdir())
    request = SegmentRequest(src=None, output=tmp_path / "o.tif", model=model,
                             band_files=[str(p) for p in files])
    plan = plan_job(request, ["cpu"])
    assert plan.scene.path == ",".join(map(str, files))
    assert (plan.scene.width, plan.scene.height, plan.scene.bands) == (WIDTH, HEIGHT, (1, 2, 3))
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize(("fields", "needle"), [
    ({"src": "a.tif", "band_files": ["b.tif"]}, "SRC and --band-files both name the scene"),
    ({"src": None}, "give the raster to segment"),
    ({"src": None, "stac": "i.json"}, "--stac needs --assets"),
    ({"src": None, "band_files": ["b.tif"], "assets": ["red"]}, "--assets needs --stac"),
    ({"src": None, "band_files": ["b.tif"], "bands": [1]}, "--bands does not apply"),
    ({"src": None, "band_files": "b.tif"}, "give a list"),
    ({"src": None, "band_files": ["b.tif"], "band_resampling": "average"}, "choose from"),
    ({"src": None, "band_files": ["o.tif"]}, "is the band file"),
])
def test_request_checks_the_scene_fields(tmp_path, fields, needle):
    with pytest.raises(GeodduError, match=needle):
        SegmentRequest(output="o.tif", model="m.pt", **fields)


def test_request_round_trips_band_files_as_json():
    request = SegmentRequest(src=None, output="o.tif", model="m.pt", stac="https://x/i.json",
                             assets=["red", "green"], band_resampling="cubic")
    again = SegmentRequest.from_json(request.to_json())
    assert again == request and again.assets == ("red", "green")
    assert again.scene_label == "https://x/i.json (assets red,green)"
