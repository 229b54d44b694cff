"""The pixel-size rule (warning, --strict) and --resample / --output-grid, on real GeoTIFFs and
a real tiny checkpoint whose card records the pixel size it was trained at."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import CRS, make_checkpoint, write_geotiff
from rasterio.transform import from_origin

import geoddu
from geoddu.checkpoint import update_card
from geoddu.engine.pixel_size import PixelSize, model_pixel_size, pixel_clause
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError, GeodduWarning
from geoddu.io.warp import Grid, model_grid, warped_vrt

GEODDU = [sys.executable, "-m", "geoddu.cli", "segment"]
ORIGIN = (500000.0, 4000000.0)


def _model(tmp_path: Path, size=(2.0, 2.0), units="metre") -> Path:
    path = make_checkpoint(tmp_path / "model.pt", subimage_size=32)
    update_card(path, {"pixel_size": list(size), "crs_units": units})
    return path


def _scene(tmp_path: Path, pixel: float, shape=(37, 45), nodata=0, name="scene.tif") -> Path:
    """Odd sizes (the model grid overhangs); with nodata, a nodata block in a corner."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, *shape), dtype=np.uint8)
    if nodata is not None:
        data[:, :12, :16] = nodata
    return write_geotiff(tmp_path / name, data, nodata=nodata,
                         transform=from_origin(*ORIGIN, pixel, pixel))


def _segment(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, *map(str, args)], capture_output=True, text=True,
                          timeout=300)


# -- the rule ---------------------------------------------------------------------------------
def test_the_rule_is_1_5x_on_either_axis_either_way():
    model = PixelSize((10.0, 10.0), "metre")
    for scene in ([16, 16], [6.2, 6.2], [10, 16], [6.2, 10]):
        assert pixel_clause(model, PixelSize(tuple(scene), "metre")), scene
    for scene in ([14, 14], [7.2, 7.2], [10, 14.9], [15, 6.7]):
        assert pixel_clause(model, PixelSize(tuple(scene), "metre")) is None, scene
    assert pixel_clause(model, PixelSize((16.0, 16.0), "metre")) == (
        "has 16 m pixels but the model was trained on 10 m pixels (1.6x larger); pass "
        "--resample to read it at the model's pixel size, or use a model trained at its pixel "
        "size")
    # Other units are said, not compared; a model that records nothing is not checked.
    assert "cannot be compared" in pixel_clause(model, PixelSize((1e-4, 1e-4), "degree"))
    assert pixel_clause(None, PixelSize((1.0, 1.0), "metre")) is None
    # The card's pixel size first, else the older "data" record's.
    card = {"pixel_size": [2.0, 2.0], "crs_units": "metre"}
    data = {"pixel_size": [10.0, 10.0], "units": "metre"}
    assert model_pixel_size({"card": card, "data": data}) == PixelSize((2.0, 2.0), "metre")
    assert model_pixel_size({"card": {}, "data": data}) == PixelSize((10.0, 10.0), "metre")
    assert model_pixel_size({"card": {"pixel_size": None}}) is None


def test_a_warning_above_1_5x_and_none_at_1_4x(tmp_path):
    model = _model(tmp_path, (1.0, 1.0))
    scene = _scene(tmp_path, 1.6, shape=(24, 24), nodata=None)
    with pytest.warns(GeodduWarning, match=r"has 1.6 m pixels but the model was trained on "
                      r"1 m pixels \(1.6x larger\); pass --resample"):
        geoddu.segment(scene, tmp_path / "a.tif", model)
    near = _scene(tmp_path, 1.4, shape=(24, 24), nodata=None, name="near.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeodduWarning)
        geoddu.segment(near, tmp_path / "b.tif", model)


def test_strict_stops_with_one_line_and_writes_nothing(tmp_path):
    model = _model(tmp_path, (1.0, 1.0))
    scene = _scene(tmp_path, 1.6, shape=(24, 24), nodata=None)
    out = tmp_path / "out"
    out.mkdir()
    warned = _segment(scene, "-o", out / "a.tif", "-m", model, "-q")
    assert warned.returncode == 0, warned.stderr
    assert warned.stderr.splitlines() == [
        f"Warning: {scene} has 1.6 m pixels but the model was trained on 1 m pixels (1.6x "
        "larger); pass --resample to read it at the model's pixel size, or use a model trained "
        "at its pixel size"]
    strict = _segment(scene, "-o", out / "b.tif", "-m", model, "--strict",
                      "--confidence", out / "c.tif", "-q")
    assert strict.returncode == 1
    assert strict.stderr.splitlines() == [
        f"Error: --strict: {scene} has 1.6 m pixels but the model was trained on 1 m pixels "
        "(1.6x larger); pass --resample to read it at the model's pixel size, or use a model "
        "trained at its pixel size"]
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a.tif.aux.xml"]
    # --resample satisfies --strict.
    ok = _segment(scene, "-o", out / "b.tif", "-m", model, "--strict", "--resample", "-q")
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr


# -- --resample -------------------------------------------------------------------------------
def _reference(scene: Path, model: Path, method: str) -> tuple[np.ndarray, np.ndarray, Grid]:
    """predict on the whole warped VRT (the one --resample reads), read in full."""
    with rasterio.open(scene) as s:
        grid = model_grid(Grid(s.crs, s.transform, s.width, s.height), (2.0, 2.0))
    vrt = scene.with_suffix(".vrt")
    vrt.write_text(warped_vrt(str(scene), grid, method))
    with rasterio.open(vrt) as v:
        image, valid = v.read(), v.dataset_mask() > 0
    return geoddu.load_model(model).predict(image, valid), valid, grid


def test_resample_on_the_model_grid_is_predict_on_the_warped_scene(tmp_path):
    model, scene = _model(tmp_path), _scene(tmp_path, 1.0)
    ref, valid, grid = _reference(scene, model, "cubic")
    result = geoddu.segment(scene, tmp_path / "m.tif", model, resample="cubic",
                            output_grid="model", confidence=tmp_path / "c.tif", strict=True)
    # 45 x 37 px of 1 m at 2 m: 23 x 19 px, centred (half a metre over each side).
    assert (grid.width, grid.height) == (23, 19) == (result.width, result.height)
    assert grid.transform == from_origin(ORIGIN[0] - 0.5, ORIGIN[1] + 0.5, 2.0, 2.0)
    with rasterio.open(tmp_path / "m.tif") as out, rasterio.open(tmp_path / "c.tif") as conf:
        assert out.crs.to_string() == CRS and out.transform == grid.transform
        assert out.shape == conf.shape == (19, 23) and conf.transform == grid.transform
        classes = out.read(1)
    np.testing.assert_array_equal(classes, ref)
    # GDAL's mask of the warped VRT: nodata where no valid scene pixel reached the kernel.
    assert not valid[:5, :7].any() and valid[7:, 9:].all()
    np.testing.assert_array_equal(classes == 255, ~valid)


def test_resample_on_the_scene_grid_keeps_the_input_grid(tmp_path):
    model, scene = _model(tmp_path), _scene(tmp_path, 1.0)
    ref, _, grid = _reference(scene, model, "bilinear")
    result = geoddu.segment(scene, tmp_path / "s.tif", model, resample="bilinear")
    assert (result.width, result.height) == (45, 37)
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "s.tif") as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert out.nodata == 255 and out.tags()["CLASS_0"] == "class 0"
        classes = out.read(1)
    assert (tmp_path / "s.tif.aux.xml").is_file()  # the legend travels with the map
    # Nearest: each scene pixel takes the class of the model pixel holding its centre.
    rows, cols = np.mgrid[0:37, 0:45]
    centre_x, centre_y = ORIGIN[0] + cols + 0.5, ORIGIN[1] - rows - 0.5
    mc, mr = ~grid.transform * (centre_x, centre_y)
    np.testing.assert_array_equal(classes, ref[mr.astype(int), mc.astype(int)])
    # The nodata block stays nodata; the rest has classes, up to the scene's edges.
    assert (classes[:10, :14] == 255).all() and (classes[14:, 18:] != 255).all()
    assert not list(tmp_path.glob(".*geoddu-tmp*"))  # the warped VRT's folder is gone


def test_a_scene_without_nodata_has_classes_to_its_edges(tmp_path):
    """No nodata: the warped VRT's alpha band is its mask, and the centred model grid leaves
    no edge pixel without data."""
    model = _model(tmp_path, (2.5, 2.5))
    scene = _scene(tmp_path, 1.0, nodata=None)
    geoddu.segment(scene, tmp_path / "s.tif", model, resample="average")
    with rasterio.open(tmp_path / "s.tif") as out:
        assert out.shape == (37, 45) and (out.read(1) != 255).all()


def test_resample_requests_and_their_refusals(tmp_path):
    model, scene = _model(tmp_path), _scene(tmp_path, 1.0)
    request = SegmentRequest(src=str(scene), output=str(tmp_path / "o.tif"), model=str(model),
                             resample="lanczos", output_grid="model", strict=True)
    assert SegmentRequest.from_dict(request.to_dict()) == request  # JSON requests carry it
    plan = plan_job(SegmentRequest(src=str(scene), output=str(tmp_path / "o.tif"),
                                   model=str(model), resample="bilinear"))
    assert (plan.scene.width, plan.scene.height) == (23, 19)
    assert plan.to_dict()["scene"]["resampled"]["scene"]["width"] == 45
    assert ("resampled  45 x 37 px of 1 m read at the model's 2 m pixels (bilinear, GDAL warped "
            "VRT); class map on the scene's grid, 45 x 37 px") in plan.describe()
    refused = {
        "--output-grid model needs --resample": dict(output_grid="model"),
        "written on the model's grid: add --output-grid model":
            dict(resample="bilinear", probabilities=str(tmp_path / "p.tif")),
        "--resume does not go with --resample": dict(resample="bilinear", resume=True),
        "--resample: unknown 'bicubic'": dict(resample="bicubic"),
    }
    for message, options in refused.items():
        with pytest.raises(GeodduError, match=message):
            SegmentRequest(src=str(scene), output=str(tmp_path / "o.tif"), model=str(model),
                           **options)
    no_size = make_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(GeodduError, match="records no pixel size"):
        geoddu.segment(scene, tmp_path / "o.tif", no_size, resample="bilinear")
    degrees = _model(tmp_path, (1e-5, 1e-5), "degree")
    with pytest.raises(GeodduError, match="--resample: .* pixels in metres but the model was "
                       "trained on pixels in degrees"):
        geoddu.segment(scene, tmp_path / "o.tif", degrees, resample="bilinear")
    assert not (tmp_path / "o.tif").exists()


def test_resample_option_on_the_command_line(tmp_path):
    model, scene = _model(tmp_path), _scene(tmp_path, 1.0)
    r = _segment(scene, "-o", tmp_path / "o.tif", "-m", model, "--resample", "--output-grid",
                 "model", "-q")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    with rasterio.open(tmp_path / "o.tif") as out:
        assert out.shape == (19, 23) and out.transform.a == 2.0
    r = _segment(scene, "-o", tmp_path / "p.tif", "-m", model, "--resample",
                 "--probabilities", tmp_path / "pp.tif", "-q")
    assert r.returncode != 0 and r.stderr.splitlines() == [
        "Error: --probabilities and --confidence are written on the model's grid: add "
        "--output-grid model to --resample"]


def test_a_bare_resample_before_the_scene_says_how_to_write_it(tmp_path):
    """`--resample` alone takes the next word as its method: before SRC it takes the scene.
    The one error line says so and how to write it; a mistyped method gets the choices alone."""
    model, scene = _model(tmp_path), _scene(tmp_path, 1.0)
    out = tmp_path / "o.tif"
    r = _segment("--resample", scene, "-o", out, "-m", model)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("Error:"), r.stderr
    assert f"give it (--resample bilinear {scene}) or put --resample after {scene}" in lines[0]
    assert not out.exists()
    r = _segment("--resample", "bilinaer", scene, "-o", out, "-m", model)
    assert r.returncode == 2 and "'bilinaer' is not one of" in r.stderr
    assert "alone takes" not in r.stderr
    r = _segment("--resample", "bilinear", scene, "-o", out, "-m", model, "-q")
    assert r.returncode == 0 and out.exists(), r.stderr
