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

import json
import os
import shlex
import shutil
import sys
import types
from pathlib import Path

import pytest
from qgis_testdata import BANDS, EPSG, GEOTRANSFORM, HEIGHT, PLUGIN_PARENT, SUBIMAGE, WIDTH

#: A name with every character a shell or an option parser could trip on.
ODD = "-o d'd \";$x"


def _bridge():
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import engine_bridge

    return engine_bridge


def _discovery():
    _bridge()
    from geoddu_qgis import discovery

    return discovery


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
    # The class map comes with its GDAL sidecar (category names, attribute table).
    assert sorted(os.listdir(os.path.dirname(outputs["OUTPUT"]))) == sorted(
        [*(os.path.basename(p) for p in outputs.values()),
         os.path.basename(outputs["OUTPUT"]) + ".aux.xml"])


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
    gets them in the request on its stdin, never as arguments; no shell."""
    engine_bridge = _bridge()
    if route == "cli":
        engine = engine_bridge.CliEngine([geoddu_cli])
    else:
        engine = _discovery().find_engine(mode="env", python_env=python_env, environ={})
        assert isinstance(engine, engine_bridge.InProcessEngine)
    shutil.copy(data["image"], tmp_path / "-scene;$x.tif")
    shutil.copy(data["model"], tmp_path / "-m odel.pt")
    monkeypatch.chdir(tmp_path)
    if route == "in-process":  # (the command's failures are checked above, at length)
        # An output folder that does not exist: the engine's one-line error, nothing is made.
        before = sorted(os.listdir(tmp_path))
        with pytest.raises(engine_bridge.EngineError) as info:
            engine.segment({"src": "-scene;$x.tif", "output": "-missing/-o.tif",
                            "model": "-m odel.pt", "probabilities": "-missing/-p.tif",
                            "overwrite": True})
        _assert_one_line(str(info.value))
        assert "-missing" in str(info.value) and "does not exist" in str(info.value)
        assert sorted(os.listdir(tmp_path)) == before

    out = engine.segment({"src": "-scene;$x.tif", "output": "-o ut'\".tif",
                          "model": "-m odel.pt", "probabilities": "--probabilities.tif",
                          "overwrite": True})
    assert out == "-o ut'\".tif"
    _assert_class_map(str(tmp_path / out))
    assert os.path.isfile(tmp_path / "--probabilities.tif")
    engine.vectorize("-o ut'\".tif", "-regions $x.gpkg")
    assert os.path.isfile(tmp_path / "-regions $x.gpkg")
    assert not [n for n in os.listdir(tmp_path) if "geoddu-tmp" in n]


def test_cli_request_goes_on_stdin_never_on_the_command_line(qgis_app, data, geoddu_cli,
                                                            tmp_path):
    """The command line is fixed (no path, no option value on it); the request goes as JSON on
    stdin, and `geoddu segment --request -` reads back exactly the request the plugin built."""
    engine_bridge = _bridge()
    folder = tmp_path / f"{ODD} files"
    folder.mkdir()
    shutil.copy(data["image"], folder / f"{ODD} scene.tif")
    shutil.copy(data["model"], folder / f"{ODD} model.pt")
    request = {"src": str(folder / f"{ODD} scene.tif"), "output": str(folder / "-o.tif"),
               "model": str(folder / f"{ODD} model.pt"), "bands": [3, 2, 1],
               "probabilities": str(folder / "--p;$x.tif"), "subimage_size": 2 * SUBIMAGE,
               "overwrite": True}
    from qgis_testdata import recording_command

    # A stand-in command that records its arguments and stdin, then runs the real one.
    script, record = recording_command(tmp_path, geoddu_cli)
    engine = engine_bridge.CliEngine([script])

    out = engine.segment(request)
    argv = (record / "argv").read_text().splitlines()
    assert argv == ["segment", "--request", "-", "--progress-format=json"]
    paths = [request[key] for key in ("src", "output", "model", "probabilities")]
    assert not [a for a in argv for p in paths if os.path.basename(p) in a], argv
    assert json.loads((record / "stdin.json").read_text()) == request
    assert out == request["output"]
    _assert_class_map(out)
    assert os.path.isfile(request["probabilities"])
    assert not [n for n in os.listdir(folder) if "geoddu-tmp" in n]


# --- what the bridge does when the engine itself breaks -----------------------------------------


def _fake_command(tmp_path, body: str) -> list[str]:
    """A stand-in geoddu command (sh): ``$OUT`` is the output of the request on its stdin."""
    script = tmp_path / "fake geoddu"
    read_output = "import json, sys; print(json.load(sys.stdin)['output'])"
    script.write_text(
        "#!/bin/sh\n"
        f"OUT=$({shlex.quote(sys.executable)} -c {shlex.quote(read_output)})\n"
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
        engine.segment({"src": "scene.tif", "output": dst, "model": "model.pt"})
    message = str(info.value)
    _assert_one_line(message)
    want = {"traceback": "RuntimeError: engine bug", "killed": "signal 9",
            "success-without-output": "did not write", "error-event": "it broke"}[how]
    assert want in message, message
    assert os.listdir(folder) == [old.name]


def test_in_process_engine_bug_leaves_nothing(qgis_app, tmp_path):
    engine_bridge = _bridge()

    def execute(request, progress=None, cancel=None):
        dst = request["output"]
        with open(dst, "w") as out:
            out.write("partial")
        folder, name = os.path.split(dst)
        with open(os.path.join(folder, f".{name}.geoddu-tmp-{os.getpid()}-x"), "w") as out:
            out.write("tmp")
        raise RuntimeError("engine bug\nwith a second line")

    modules = {name: types.ModuleType(name) for name in (
        "fake_geoddu", "fake_geoddu.errors", "fake_geoddu.engine", "fake_geoddu.engine.request",
        "fake_geoddu.engine.execute")}
    errors = modules["fake_geoddu.errors"]
    errors.GeodduError = type("GeodduError", (Exception,), {})
    errors.Cancelled = type("Cancelled", (errors.GeodduError,), {})
    modules["fake_geoddu.engine.request"].SegmentRequest = types.SimpleNamespace(
        from_dict=dict)
    modules["fake_geoddu.engine.execute"].execute = execute
    module = modules["fake_geoddu"]
    module.segment = lambda *args, **kwargs: None
    sys.modules.update(modules)
    try:
        engine = engine_bridge.InProcessEngine(module, "import", "a test")
        with pytest.raises(engine_bridge.EngineError) as info:
            engine.segment({"src": "scene.tif", "output": str(tmp_path / "classes.tif"),
                            "model": "model.pt"})
    finally:
        for name in modules:
            del sys.modules[name]
    assert str(info.value) == "RuntimeError: engine bug"
    assert "Traceback" in info.value.details
    assert os.listdir(tmp_path) == []
