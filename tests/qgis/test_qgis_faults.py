"""Faults through the QGIS plugin: no fault ever ends in a success with a broken file.

Every fault runs through the real Processing algorithm (or the real engine bridge) with each
engine set-up: ``cli`` (the geoddu command as a subprocess) and ``env`` (geoddu imported
in-process from a configured Python environment). For each one: a QgsProcessingException (or
EngineError) with a one-line message, nothing at any output path, no ``geoddu-tmp`` file left
beside them, and a rerun with good inputs to the same output paths succeeds. Odd but legal file
names (spaces, quotes, ``;``, ``$``, a leading ``-``) must simply work.

The reruns after a failure go through the in-process engine, which starts in well under a
second (the geoddu command takes seconds to import torch): what they check, that the failed run
left nothing in the way of the next one, does not depend on the engine set-up, and every set-up
has its own successful runs below.
"""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest
from qgis_testdata import BANDS, EPSG, GEOTRANSFORM, HEIGHT, PLUGIN_PARENT, WIDTH

MODES = ["cli", "env"]
#: A name with every character a shell or an option parser could trip on.
ODD = "-o d'd \";$x"


def _bridge():
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import engine_bridge

    return engine_bridge


@pytest.fixture(params=MODES)
def mode(request, engine_mode):
    if request.param == "env":
        engine_mode("env", request.getfixturevalue("python_env"))
    else:
        engine_mode(request.param)
    return request.param


@pytest.fixture
def rerun(plugin, data, engine_mode, python_env, feedback):
    """Segment the good scene to ``outputs`` (through the in-process engine); check it."""

    def run(outputs: dict) -> None:
        engine_mode("env", python_env)
        result = _run({"INPUT": data["image"], "MODEL": data["model"], **outputs}, feedback())
        for name, path in outputs.items():
            assert result[name] == path and os.path.isfile(path), name
        _assert_class_map(outputs["OUTPUT"])
        folder = os.path.dirname(outputs["OUTPUT"])
        assert not [n for n in os.listdir(folder) if "geoddu-tmp" in n]

    return run


@pytest.fixture
def feedback(qgis_app):
    from qgis.core import QgsProcessingFeedback

    class Feedback(QgsProcessingFeedback):
        def __init__(self, cancel_after=None):
            super().__init__()
            self.steps = 0
            self.cancel_after = cancel_after
            self.progressChanged.connect(self._on_progress)

        def _on_progress(self, value):
            self.steps += 1
            if self.cancel_after is not None and self.steps >= self.cancel_after:
                self.cancel()

    return Feedback


@pytest.fixture(scope="module")
def bad(data, tmp_path_factory) -> dict:
    """Broken inputs: not a raster, empty, truncated, too many bands, not a checkpoint."""
    import numpy as np
    from osgeo import gdal, osr

    folder = tmp_path_factory.mktemp("bad inputs")
    text = folder / "not-a-raster.tif"
    text.write_text("this is not a GeoTIFF\n")
    empty = folder / "empty.tif"
    empty.write_bytes(b"")
    truncated = folder / "truncated.tif"
    whole = Path(data["image"]).read_bytes()
    truncated.write_bytes(whole[: len(whole) // 2])
    ds = gdal.Open(str(truncated))  # the header is intact: the engine fails while reading
    assert ds is not None and ds.RasterCount == BANDS
    ds = None
    five = folder / "five-bands.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(five), WIDTH, HEIGHT, BANDS + 2, gdal.GDT_Byte)
    ds.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    ds.SetProjection(srs.ExportToWkt())
    rng = np.random.default_rng(1)
    for b in range(BANDS + 2):
        ds.GetRasterBand(b + 1).WriteArray(rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8))
    ds = None
    random_model = folder / "random.pt"
    random_model.write_bytes(np.random.default_rng(2).integers(0, 256, 4096, np.uint8).tobytes())
    return {"text": str(text), "empty": str(empty), "truncated": str(truncated),
            "five_bands": str(five), "random_model": str(random_model),
            "missing_model": str(folder / "no-such-model.pt")}


def _run(params, feedback):
    import processing

    return processing.run("geoddu:segment", params, feedback=feedback)


def _outputs(folder, name="classes") -> dict:
    return {"OUTPUT": str(folder / f"{name}.tif"),
            "PROBABILITIES": str(folder / f"{name}-probabilities.tif"),
            "POLYGONS": str(folder / f"{name}.gpkg")}


def _assert_one_line(message: str) -> None:
    assert message.strip(), "empty error message"
    assert "\n" not in message.strip(), message
    assert "Traceback" not in message, message


def _assert_left_nothing(outputs, folder) -> None:
    for path in outputs:
        assert not os.path.exists(path), f"{path} left behind"
    names = os.listdir(folder) if os.path.isdir(folder) else []
    assert not [n for n in names if "geoddu-tmp" in n], names
    assert names == [], names


def _assert_class_map(path) -> None:
    from osgeo import gdal

    ds = gdal.Open(path)
    assert ds is not None, path
    assert (ds.RasterYSize, ds.RasterXSize) == (HEIGHT, WIDTH)
    assert ds.GetGeoTransform() == pytest.approx(GEOTRANSFORM)
    assert set(ds.GetRasterBand(1).ReadAsArray().ravel().tolist()) <= {0, 1, 2}
    ds = None


# --- broken inputs through the Processing algorithm ----------------------------------------------

#: case: (source, model, what the message must name) as keys of `bad` / `data`.
FAULTS = {
    "not-a-raster": ("text", "model", "not-a-raster.tif"),
    "empty-file": ("empty", "model", "empty.tif"),
    "truncated-geotiff": ("truncated", "model", "truncated.tif"),
    "random-bytes-model": ("image", "random_model", "random.pt"),
    "missing-model": ("image", "missing_model", "no-such-model.pt"),
    "more-bands-than-the-model": ("five_bands", "model", "band"),
}


@pytest.mark.parametrize("case", list(FAULTS))
def test_broken_input_fails_cleanly_and_a_rerun_succeeds(case, plugin, data, bad, mode, feedback,
                                                         rerun, tmp_path):
    from qgis.core import QgsProcessingException

    source, model, named = FAULTS[case]
    inputs = {**data, **bad}
    folder = tmp_path / "out"
    folder.mkdir()
    outputs = _outputs(folder)
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": inputs[source], "MODEL": inputs[model], **outputs}, feedback())
    message = str(info.value)
    _assert_one_line(message)
    assert named in message, message
    _assert_left_nothing(outputs.values(), folder)

    # The same output paths with good inputs (polygons only where the run got that far).
    if case != "truncated-geotiff":
        del outputs["POLYGONS"]
    rerun(outputs)


def test_missing_output_folder_is_made_and_removed_again_on_failure(plugin, data, bad, mode,
                                                                    feedback, rerun, tmp_path):
    """Output folders that do not exist are made; a failed run removes them again."""
    from qgis.core import QgsProcessingException

    outputs = _outputs(tmp_path / "new" / "folder")
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": data["image"], "MODEL": bad["random_model"], **outputs}, feedback())
    _assert_one_line(str(info.value))
    assert os.listdir(tmp_path) == []

    del outputs["POLYGONS"]
    rerun(outputs)


def test_output_folder_that_cannot_be_made(plugin, data, mode, feedback, tmp_path):
    from qgis.core import QgsProcessingException

    (tmp_path / "a-file").write_text("not a folder\n")
    outputs = _outputs(tmp_path / "a-file" / "sub")
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": data["image"], "MODEL": data["model"], **outputs}, feedback())
    _assert_one_line(str(info.value))
    assert os.listdir(tmp_path) == ["a-file"]


# --- odd but legal file names --------------------------------------------------------------------


@pytest.fixture
def odd_inputs(data, tmp_path) -> dict:
    folder = tmp_path / f"{ODD} in"
    folder.mkdir()
    image = folder / f"{ODD} scene.tif"
    model = folder / f"{ODD} model.pt"
    shutil.copy(data["image"], image)
    shutil.copy(data["model"], model)
    return {"image": str(image), "model": str(model), "folder": folder}


def _odd_outputs(tmp_path, polygons=False) -> dict:
    folder = tmp_path / f"{ODD} out"
    folder.mkdir(exist_ok=True)
    outputs = {"OUTPUT": str(folder / f"{ODD} classes.tif"),
               "PROBABILITIES": str(folder / f"{ODD} probabilities.tif")}
    if polygons:
        outputs["POLYGONS"] = str(folder / f"{ODD} regions.gpkg")
    return outputs


def test_odd_file_names_cancel_then_run(plugin, odd_inputs, mode, feedback, tmp_path):
    """Odd names for source, model and outputs: cancelled mid-run, nothing is left; run again,
    it works."""
    from qgis.core import QgsProcessingException

    outputs = _odd_outputs(tmp_path)
    params = {"INPUT": odd_inputs["image"], "MODEL": odd_inputs["model"], **outputs}
    feedback_ = feedback(cancel_after=3)
    with pytest.raises(QgsProcessingException, match="cancel") as info:
        _run(params, feedback_)
    assert feedback_.isCanceled()
    _assert_one_line(str(info.value))
    _assert_left_nothing(outputs.values(), os.path.dirname(outputs["OUTPUT"]))

    result = _run(params, feedback())
    assert result["ENGINE"] == mode
    for name, path in outputs.items():
        assert result[name] == path and os.path.isfile(path), name
    _assert_class_map(outputs["OUTPUT"])
    assert sorted(os.listdir(os.path.dirname(outputs["OUTPUT"]))) == sorted(
        os.path.basename(p) for p in outputs.values())


def test_odd_file_names_for_aoi_and_polygons(plugin, odd_inputs, mode, feedback, tmp_path):
    """An area of interest file and a polygon output with odd names (``;`` included)."""
    from osgeo import ogr, osr

    x0, dx, _, y0, _, dy = GEOTRANSFORM
    aoi = str(odd_inputs["folder"] / f"{ODD} aoi.gpkg")
    ds = ogr.GetDriverByName("GPKG").CreateDataSource(aoi)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    layer = ds.CreateLayer("aoi", srs, ogr.wkbPolygon)
    feature = ogr.Feature(layer.GetLayerDefn())
    x1, x2, y1, y2 = x0 + 10 * dx, x0 + 50 * dx, y0 + 60 * dy, y0 + 20 * dy
    feature.SetGeometry(ogr.CreateGeometryFromWkt(
        f"POLYGON(({x1} {y1},{x2} {y1},{x2} {y2},{x1} {y2},{x1} {y1}))"))
    layer.CreateFeature(feature)
    feature = layer = ds = None

    outputs = _odd_outputs(tmp_path, polygons=True)
    result = _run({"INPUT": odd_inputs["image"], "MODEL": odd_inputs["model"], "AOI": aoi,
                   **outputs}, feedback())
    for name, path in outputs.items():
        assert result[name] == path and os.path.isfile(path), name
    from osgeo import gdal

    values = gdal.Open(outputs["OUTPUT"]).ReadAsArray()
    assert (values[30:50, 20:40] != 255).all() and (values[:, 70:] == 255).all()
    vector = ogr.Open(outputs["POLYGONS"])
    assert vector.GetLayer(0).GetFeatureCount() > 0
    vector = None


@pytest.mark.parametrize("route", ["cli", "in-process"])
def test_bridge_takes_names_that_look_like_options(route, plugin, data, python_env, geoddu_cli,
                                                   monkeypatch, tmp_path):
    """Relative names with a leading ``-`` (what a script might pass the bridge): the command
    gets every option before ``--`` and the paths after it, as a list, no shell."""
    engine_bridge = _bridge()
    if route == "cli":
        engine = engine_bridge.CliEngine([geoddu_cli])
    else:
        engine = engine_bridge.find_engine(mode="env", python_env=python_env, environ={})
        assert isinstance(engine, engine_bridge.InProcessEngine)
    shutil.copy(data["image"], tmp_path / "-scene;$x.tif")
    shutil.copy(data["model"], tmp_path / "-m odel.pt")
    monkeypatch.chdir(tmp_path)
    if route == "in-process":  # (the command's failures are checked above, at length)
        # An output folder that does not exist: the engine's one-line error, nothing is made.
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(engine_bridge.EngineError) as info:
            engine.segment("-scene;$x.tif", "-missing/-o.tif", "-m odel.pt",
                           probabilities="-missing/-p.tif")
        _assert_one_line(str(info.value))
        assert "-missing" in str(info.value) and "does not exist" in str(info.value)
        assert sorted(os.listdir(tmp_path)) == before

    out = engine.segment("-scene;$x.tif", "-o ut'\".tif", "-m odel.pt",
                         probabilities="--probabilities.tif")
    assert out == "-o ut'\".tif"
    _assert_class_map(str(tmp_path / out))
    assert os.path.isfile(tmp_path / "--probabilities.tif")
    engine.vectorize("-o ut'\".tif", "-regions $x.gpkg")
    assert os.path.isfile(tmp_path / "-regions $x.gpkg")
    assert not [n for n in os.listdir(tmp_path) if "geoddu-tmp" in n]


def test_cli_arguments_are_options_then_double_dash_then_paths(qgis_app):
    engine_bridge = _bridge()
    engine = engine_bridge.CliEngine(["geoddu"])
    args = engine.arguments("-src.tif", "-dst.tif", "-m.pt", bands=[3, 1], probabilities="-p.tif",
                            aoi="-a;b.gpkg", aoi_layer="-layer", subimage_size=64)
    assert args[:2] == ["geoddu", "segment"]
    assert args[-2:] == ["--", "-src.tif"]
    options = args[2:-2]
    assert all(a.startswith("--") for a in options), options  # each value glued to its option
    for want in ("--output=-dst.tif", "--model=-m.pt", "--probabilities=-p.tif",
                 "--aoi=-a;b.gpkg", "--aoi-layer=-layer", "--bands=3,1", "--subimage-size=64"):
        assert want in options


# --- what the bridge does when the engine itself breaks -----------------------------------------


def _fake_command(tmp_path, body: str) -> list[str]:
    """A stand-in geoddu command (sh): ``$OUT`` is the --output value."""
    script = tmp_path / "fake geoddu"
    script.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in --output=*) OUT="${a#--output=}";; esac; done\n'
        'DIR=$(dirname "$OUT"); NAME=$(basename "$OUT")\n' + body)
    script.chmod(0o755)
    return [str(script)]


@pytest.mark.parametrize("how", ["traceback", "killed", "success-without-output", "error-event"])
def test_cli_crash_leaves_nothing(how, qgis_app, tmp_path):
    """A command that crashes (after writing a partial output and a temporary file), is killed,
    or claims success without an output: EngineError with one line, and nothing left."""
    engine_bridge = _bridge()
    partial = ('printf partial > "$OUT"; printf tmp > "$DIR/.$NAME.geoddu-tmp-999-x"\n'
               'mkdir "$DIR/.$NAME.geoddu-tmp-999-dir"\n')
    body = {
        "traceback": partial + 'echo "Traceback (most recent call last):" >&2\n'
                               'echo "  File x, line 1" >&2\n'
                               'echo "RuntimeError: engine bug" >&2; exit 1\n',
        "killed": partial + "kill -9 $$\n",
        "success-without-output": "exit 0\n",
        "error-event": partial + "printf '%s\\n' '{\"event\": \"error\", "
                                 "\"message\": \"it broke\\nbadly\"}' >&2\nexit 0\n",
    }[how]
    folder = tmp_path / "out"
    folder.mkdir()
    old = folder / ".classes.tif.geoddu-tmp-1-other-run"  # not this run's: it stays
    old.write_text("another run's\n")
    engine = engine_bridge.CliEngine(_fake_command(tmp_path, body))
    dst = str(folder / "classes.tif")
    with pytest.raises(engine_bridge.EngineError) as info:
        engine.segment("scene.tif", dst, "model.pt")
    message = str(info.value)
    _assert_one_line(message)
    want = {"traceback": "RuntimeError: engine bug", "killed": "signal 9",
            "success-without-output": "did not write", "error-event": "it broke"}[how]
    assert want in message, message
    assert os.listdir(folder) == [old.name]


def test_in_process_engine_bug_leaves_nothing(qgis_app, tmp_path):
    engine_bridge = _bridge()

    def segment(src, dst, model, **kwargs):
        with open(dst, "w") as out:
            out.write("partial")
        folder, name = os.path.split(dst)
        with open(os.path.join(folder, f".{name}.geoddu-tmp-{os.getpid()}-x"), "w") as out:
            out.write("tmp")
        raise RuntimeError("engine bug\nwith a second line")

    errors = types.ModuleType("fake_geoddu.errors")
    errors.GeodduError = type("GeodduError", (Exception,), {})
    errors.Cancelled = type("Cancelled", (errors.GeodduError,), {})
    module = types.ModuleType("fake_geoddu")
    module.segment = segment
    sys.modules["fake_geoddu"], sys.modules["fake_geoddu.errors"] = module, errors
    try:
        engine = engine_bridge.InProcessEngine(module, "import", "a test")
        with pytest.raises(engine_bridge.EngineError) as info:
            engine.segment("scene.tif", str(tmp_path / "classes.tif"), "model.pt")
    finally:
        del sys.modules["fake_geoddu"], sys.modules["fake_geoddu.errors"]
    assert str(info.value) == "RuntimeError: engine bug"
    assert "Traceback" in info.value.details
    assert os.listdir(tmp_path) == []
