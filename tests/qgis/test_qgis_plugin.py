"""The QGIS plugin in a real QGIS: provider, processing.run, modeler, cancellation, qgis_process.

Every run segments a GeoTIFF written by GDAL in the test with a checkpoint from `geoddu init`,
through each engine set-up the machine has: ``cli`` (the geoddu command as a subprocess), ``env``
(a configured Python environment imported in-process) and ``import`` (geoddu importable in QGIS's
Python, through ``qgis_process``).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from qgis_testdata import EPSG, GEOTRANSFORM, HEIGHT, PLUGIN_PARENT, SUBIMAGE, WIDTH, missing

MODES = ["cli", "env"]
SUBIMAGES = (HEIGHT // SUBIMAGE) * (WIDTH // SUBIMAGE)  # 3 x 4 = 12


def _feedback_class():
    from qgis.core import QgsProcessingFeedback

    class RecordingFeedback(QgsProcessingFeedback):
        """Records progress and messages; cancels itself after `cancel_after` progress steps."""

        def __init__(self, cancel_after: int | None = None):
            super().__init__()
            self.progress_values: list[float] = []
            self.messages: list[str] = []
            self.errors: list[str] = []
            self.cancel_after = cancel_after
            self.progressChanged.connect(self._on_progress)

        def _on_progress(self, value: float) -> None:
            self.progress_values.append(value)
            if self.cancel_after is not None and len(self.progress_values) >= self.cancel_after:
                self.cancel()

        def pushInfo(self, info):  # noqa: N802
            self.messages.append(info)

        def setProgressText(self, text):  # noqa: N802
            self.messages.append(text)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803
            self.errors.append(error)

    return RecordingFeedback


@pytest.fixture
def feedback_cls(qgis_app):
    return _feedback_class()


@pytest.fixture(params=MODES)
def mode(request, engine_mode):
    if request.param == "env":
        engine_mode("env", request.getfixturevalue("python_env"))
    else:
        engine_mode(request.param)
    return request.param


def _run(params, feedback):
    import processing

    return processing.run("geoddu:segment", params, feedback=feedback)


def _georef(path):
    from osgeo import gdal, osr

    ds = gdal.Open(path)
    assert ds is not None, path
    srs = osr.SpatialReference(wkt=ds.GetProjection())
    srs.AutoIdentifyEPSG()
    info = {
        "size": (ds.RasterYSize, ds.RasterXSize),
        "count": ds.RasterCount,
        "transform": ds.GetGeoTransform(),
        "epsg": int(srs.GetAuthorityCode(None)),
        "dtype": gdal.GetDataTypeName(ds.GetRasterBand(1).DataType),
        "nodata": ds.GetRasterBand(1).GetNoDataValue(),
        "class_names": ds.GetMetadataItem("CLASS_NAMES"),
        "values": ds.GetRasterBand(1).ReadAsArray(),
    }
    ds = None
    return info


# --- the plugin and its provider ------------------------------------------------------------


def test_provider_and_algorithm_are_registered(plugin):
    from qgis.core import QgsApplication, QgsProcessingAlgorithm

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("geoddu")
    assert provider is not None
    assert sorted(a.id() for a in provider.algorithms()) == [
        "geoddu:segment", "geoddu:train", "geoddu:vectorize"]
    alg = registry.algorithmById("geoddu:segment")
    assert alg.displayName() == "Segment raster (DDU-Net)"
    names = [p.name() for p in alg.parameterDefinitions()]
    for required in ("INPUT", "MODEL", "OUTPUT", "DEVICE", "GPUS", "SUBIMAGE_SIZE",
                     "PROBABILITIES", "CONFIDENCE", "POLYGONS", "MIN_AREA", "SIMPLIFY"):
        assert required in names
    assert not alg.parameterDefinition("PROBABILITIES").createByDefault()
    flags = alg.flags()
    assert flags & QgsProcessingAlgorithm.FlagSupportsBatch
    assert flags & QgsProcessingAlgorithm.FlagCanCancel
    assert not flags & QgsProcessingAlgorithm.FlagNoThreading  # runs in the background
    assert not flags & QgsProcessingAlgorithm.FlagHideFromModeler


def test_plugin_folder_and_metadata():
    folder = PLUGIN_PARENT / "geoddu_qgis"
    meta = configparser.ConfigParser()
    meta.read(folder / "metadata.txt")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email"):
        assert general.get(key), key
    assert general["hasProcessingProvider"] == "yes"
    assert (folder / general["icon"]).is_file()
    assert not (PLUGIN_PARENT / "geoddu").exists()  # would shadow the engine package


# --- processing.run through each engine set-up ------------------------------------------------


def test_segment_writes_a_georeferenced_class_map(plugin, data, mode, feedback_cls, tmp_path):
    feedback = feedback_cls()
    dst = str(tmp_path / "classes.tif")
    result = _run({"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst}, feedback)

    assert result["OUTPUT"] == dst
    assert result["ENGINE"] == mode
    src, out = _georef(data["image"]), _georef(dst)
    assert out["size"] == src["size"] == (HEIGHT, WIDTH)
    assert out["epsg"] == src["epsg"] == EPSG
    assert out["transform"] == pytest.approx(src["transform"]) == GEOTRANSFORM
    assert out["count"] == 1 and out["dtype"] == "Byte" and out["nodata"] == 255
    assert set(out["values"].ravel().tolist()) <= {0, 1, 2}
    assert json.loads(out["class_names"]) == [c["name"] for c in data["classes"]]

    # Progress through the Processing feedback: every subimage encoded and decoded (one pass
    # interleaves the stages), never going back, ending at 100.
    values = feedback.progress_values
    assert len(values) >= 2 * SUBIMAGES
    assert values == sorted(values)
    assert values[-1] == pytest.approx(100)
    assert any("encode" in m for m in feedback.messages)
    assert any("decode" in m for m in feedback.messages)
    assert any(m.startswith("Engine:") for m in feedback.messages)
    assert not feedback.errors


def test_result_is_added_with_class_colours_and_names(plugin, data, mode, feedback_cls,
                                                      tmp_path):
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    dst = str(tmp_path / "styled.tif")
    result = processing.runAndLoadResults(
        "geoddu:segment", {"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst},
        feedback=feedback_cls())
    project = QgsProject.instance()
    layers = [lyr for lyr in project.mapLayers().values() if lyr.source() == result["OUTPUT"]]
    assert len(layers) == 1
    renderer = layers[0].renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert renderer.band() == 1
    got = [(int(c.value), c.label, [c.color.red(), c.color.green(), c.color.blue()])
           for c in renderer.classes()]
    want = [(i, c["name"], c["color"]) for i, c in enumerate(data["classes"])]
    assert got == want
    project.removeMapLayer(layers[0].id())
    del layers, renderer


def test_cancel_between_subimages_leaves_no_output(plugin, data, mode, feedback_cls, tmp_path):
    from qgis.core import QgsProcessingException

    feedback = feedback_cls(cancel_after=2)
    dst = str(tmp_path / "cancelled.tif")
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst}, feedback)
    assert feedback.isCanceled()
    assert len(feedback.progress_values) < 2 * SUBIMAGES  # it stopped early
    assert os.listdir(tmp_path) == []  # no output, and no temporary file either


def test_cancel_kills_a_stuck_command_and_cleans_up(plugin, data, engine_mode, feedback_cls,
                                                    monkeypatch, tmp_path):
    """A geoddu command that does not stop on SIGINT at once is killed, and its temporary
    files are removed by the plugin."""
    from geoddu_qgis.engine_bridge import CliEngine
    from qgis.core import QgsProcessingException

    engine_mode("cli")
    monkeypatch.setattr(CliEngine, "stop_grace_s", 0.0)
    feedback = feedback_cls(cancel_after=2)
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"],
              "OUTPUT": str(tmp_path / "killed.tif")}, feedback)
    assert os.listdir(tmp_path) == []


def test_engine_error_is_a_processing_error_with_its_message(plugin, data, mode, feedback_cls,
                                                             tmp_path):
    from qgis.core import QgsProcessingException

    dst = str(tmp_path / "never.tif")
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": data["image"], "MODEL": data["bad_model"], "OUTPUT": dst},
             feedback_cls())
    message = str(info.value)
    assert "\n" not in message.strip()
    assert data["bad_model"] in message and "checkpoint" in message
    assert os.listdir(tmp_path) == []


def test_probabilities_and_confidence_outputs(plugin, data, mode, feedback_cls, tmp_path):
    from osgeo import gdal

    paths = {name: str(tmp_path / f"{name.lower()}.tif")
             for name in ("OUTPUT", "PROBABILITIES", "CONFIDENCE")}
    result = _run({"INPUT": data["image"], "MODEL": data["model"], **paths}, feedback_cls())
    for name, path in paths.items():
        assert result[name] == path and os.path.isfile(path)
    probs = gdal.Open(paths["PROBABILITIES"])
    assert probs.RasterCount == len(data["classes"])
    assert gdal.GetDataTypeName(probs.GetRasterBand(1).DataType) == "Float32"
    total = sum(probs.GetRasterBand(b + 1).ReadAsArray() for b in range(probs.RasterCount))
    assert abs(total - 1).max() < 1e-4
    probs = None


def test_polygons_output_is_written_and_styled(plugin, data, mode, feedback_cls, tmp_path):
    import processing
    from osgeo import ogr
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject

    dst, polygons = str(tmp_path / "classes.tif"), str(tmp_path / "regions.gpkg")
    feedback = feedback_cls()
    result = processing.runAndLoadResults(
        "geoddu:segment",
        {"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst, "POLYGONS": polygons,
         "MIN_AREA": 400.0},  # 4 pixels of 10 m x 10 m
        feedback=feedback)
    assert result["POLYGONS"] == polygons
    assert any("polygons" in m for m in feedback.messages)
    assert feedback.progress_values[-1] == pytest.approx(100)

    ds = ogr.Open(polygons)
    layer = ds.GetLayer(0)
    assert layer.GetGeomType() in (ogr.wkbPolygon, ogr.wkbMultiPolygon)
    assert layer.GetFeatureCount() > 0
    srs = layer.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    assert int(srs.GetAuthorityCode(None)) == EPSG
    names = {c["name"] for c in data["classes"]}
    assert {f.GetField("class_name") for f in layer} <= names
    minx, maxx, miny, maxy = layer.GetExtent()
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    assert (minx, maxx, miny, maxy) == pytest.approx(
        (x0, x0 + WIDTH * dx, y0 + HEIGHT * dy, y0))
    ds = None

    project = QgsProject.instance()
    loaded = [lyr for lyr in project.mapLayers().values()
              if lyr.source().split("|")[0] == polygons]
    assert len(loaded) == 1
    renderer = loaded[0].renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "class_id"
    got = [(int(c.value()), c.label(), c.symbol().color().name()) for c in renderer.categories()]
    want = [(i, c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"]))
            for i, c in enumerate(data["classes"])]
    assert got == want
    for lyr in list(project.mapLayers().values()):
        project.removeMapLayer(lyr.id())
    del loaded, renderer


def test_cancel_while_polygonising_leaves_no_output(plugin, data, mode, feedback_cls,
                                                    tmp_path):
    """Cancelled after the class map was written: that class map is removed too."""
    from qgis.core import QgsProcessingException

    class CancelAtPolygons(feedback_cls):
        def setProgressText(self, text):  # noqa: N802
            super().setProgressText(text)
            if "polygons" in text:
                self.cancel()

    feedback = CancelAtPolygons()
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"],
              "OUTPUT": str(tmp_path / "classes.tif"),
              "PROBABILITIES": str(tmp_path / "probs.tif"),
              "POLYGONS": str(tmp_path / "regions.gpkg")}, feedback)
    assert len(feedback.progress_values) >= 2 * SUBIMAGES  # the class map was done
    assert os.listdir(tmp_path) == []


def test_parameters_reach_the_engine(plugin, data, mode, feedback_cls, tmp_path):
    """Bands and subimage size are passed on: a bad band number comes back as the engine's
    error, and another subimage size changes the number of progress steps."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="band"):
        _run({"INPUT": data["image"], "MODEL": data["model"], "BANDS": [1, 2, 7],
              "OUTPUT": str(tmp_path / "bands.tif")}, feedback_cls())
    feedback = feedback_cls()
    _run({"INPUT": data["image"], "MODEL": data["model"], "BANDS": [3, 2, 1],
          "SUBIMAGE_SIZE": 2 * SUBIMAGE, "OUTPUT": str(tmp_path / "big.tif")}, feedback)
    assert any("(4 steps)" in m for m in feedback.messages)  # 2 x 2 subimages of 64 px


def test_area_of_interest_layer(plugin, data, mode, feedback_cls, tmp_path):
    """An optional polygon layer (here a memory layer in another CRS) limits the class map to
    its pixels; the rest is nodata."""
    from osgeo import gdal
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsRectangle,
        QgsVectorLayer,
    )

    x0, dx, _, y0, _, dy = GEOTRANSFORM
    rect = QgsRectangle(x0 + 10 * dx, y0 + 60 * dy, x0 + 50 * dx, y0 + 20 * dy)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem(f"EPSG:{EPSG}"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"),
                                      QgsProject.instance())
    geom = QgsGeometry.fromRect(rect)
    geom.transform(to_wgs84)
    aoi = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(geom)
    aoi.dataProvider().addFeatures([feature])
    dst = str(tmp_path / "aoi.tif")
    _run({"INPUT": data["image"], "MODEL": data["model"], "AOI": aoi, "OUTPUT": dst},
         feedback_cls())
    values = gdal.Open(dst).ReadAsArray()
    assert (values[30:50, 20:40] != 255).all()  # well inside the area
    assert (values[:, 70:] == 255).all() and (values[80:, :] == 255).all()  # well outside
    del aoi


def test_in_a_processing_model(plugin, data, engine_mode, tmp_path):
    """The algorithm as a step of a graphical model (what the modeler builds)."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelOutput,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    engine_mode("cli")
    model = QgsProcessingModelAlgorithm("segment scene", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "Scene"),
                            QgsProcessingModelParameter("scene"))
    model.addModelParameter(QgsProcessingParameterFile("ckpt", "Checkpoint"),
                            QgsProcessingModelParameter("ckpt"))
    child = QgsProcessingModelChildAlgorithm("geoddu:segment")
    child.setChildId("seg")
    child.addParameterSources(
        "INPUT", [QgsProcessingModelChildParameterSource.fromModelParameter("scene")])
    child.addParameterSources(
        "MODEL", [QgsProcessingModelChildParameterSource.fromModelParameter("ckpt")])
    output = QgsProcessingModelOutput("landcover", "Land cover")
    output.setChildId("seg")
    output.setChildOutputName("OUTPUT")
    child.setModelOutputs({"landcover": output})
    model.addChildAlgorithm(child)
    dst = str(tmp_path / "model-out.tif")
    result = processing.run(model, {"scene": data["image"], "ckpt": data["model"],
                                    "seg:landcover": dst})
    assert result["seg:landcover"] == dst
    assert _georef(dst)["transform"] == pytest.approx(GEOTRANSFORM)


# --- engine discovery and settings -------------------------------------------------------------


def test_missing_engine_is_explained(plugin, data, feedback_cls, monkeypatch, tmp_path):
    from qgis.core import QgsProcessingException

    monkeypatch.setenv("GEODDU_ENGINE", "cli")
    monkeypatch.setenv("GEODDU_CLI", str(tmp_path / "no-such-geoddu"))
    with pytest.raises(QgsProcessingException, match="geoddu engine not found"):
        _run({"INPUT": data["image"], "MODEL": data["model"],
              "OUTPUT": str(tmp_path / "x.tif")}, feedback_cls())


def test_plugin_settings_choose_the_engine(plugin, data, geoddu_cli, feedback_cls, monkeypatch,
                                           tmp_path):
    """Without environment variables the plugin's Processing settings decide."""
    from processing.core.ProcessingConfig import ProcessingConfig

    for var in ("GEODDU_ENGINE", "GEODDU_CLI", "GEODDU_PYTHON_ENV"):
        monkeypatch.delenv(var, raising=False)
    assert "GEODDU_CLI" in ProcessingConfig.settings  # shown in Options > Processing
    ProcessingConfig.setSettingValue("GEODDU_ENGINE", 3)  # cli
    ProcessingConfig.setSettingValue("GEODDU_CLI", geoddu_cli)
    try:
        result = _run({"INPUT": data["image"], "MODEL": data["model"],
                       "OUTPUT": str(tmp_path / "settings.tif")}, feedback_cls())
    finally:
        ProcessingConfig.setSettingValue("GEODDU_ENGINE", 0)
        ProcessingConfig.setSettingValue("GEODDU_CLI", "")
    assert result["ENGINE"] == "cli"


def test_env_without_matching_python_falls_back_to_its_command(qgis_app, tmp_path):
    """An environment for another Python version is run through its own geoddu command."""
    sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import discovery, engine_bridge

    env = tmp_path / "other-env"
    (env / "lib" / "python2.7" / "site-packages").mkdir(parents=True)
    (env / "bin").mkdir()
    exe = env / "bin" / "geoddu"
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    engine = discovery.find_engine(mode="env", python_env=str(env), environ={})
    assert isinstance(engine, engine_bridge.CliEngine) and engine.command == [str(exe)]
    with pytest.raises(engine_bridge.EngineNotFound, match="no geoddu command"):
        discovery.find_engine(mode="env", python_env=str(tmp_path), environ={})


# --- installable zip and qgis_process ------------------------------------------------------------


@pytest.fixture(scope="module")
def installed_plugins(tmp_path_factory):
    """The plugin zip from build_zip.py, unpacked as a user would install it."""
    build = tmp_path_factory.mktemp("build")
    zip_path = build / "geoddu_qgis.zip"
    subprocess.run([sys.executable, str(PLUGIN_PARENT / "build_zip.py"), "-o", str(zip_path)],
                   check=True, capture_output=True, text=True)
    with zipfile.ZipFile(zip_path) as archive:
        names = archive.namelist()
        assert "geoddu_qgis/metadata.txt" in names and "geoddu_qgis/icon.png" in names
        assert all(n.startswith("geoddu_qgis/") for n in names)
        assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
        plugins = build / "plugins"
        archive.extractall(plugins)
    return plugins


def _qgis_process():
    exe = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not os.path.exists(exe):
        missing("qgis_process.bin not found (Debian package qgis)")
    return exe


def _qgis_process_env(plugins, home, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GEODDU_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    # QGIS's embedded Python finds its home through the `python3` on PATH: a virtualenv there
    # gives it another Python's standard library (and a crash).
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep)
        if entry and not os.path.isfile(os.path.join(entry, os.pardir, "pyvenv.cfg")))
    env.update(HOME=str(home), QGIS_PLUGINPATH=str(plugins), QT_QPA_PLATFORM="offscreen",
               XDG_RUNTIME_DIR=str(home))
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def qgis_process_home(installed_plugins, tmp_path_factory):
    """A fresh QGIS profile in which the unpacked plugin is enabled for qgis_process."""
    home = tmp_path_factory.mktemp("home")
    env = _qgis_process_env(installed_plugins, home)
    done = subprocess.run([_qgis_process(), "plugins", "enable", "geoddu_qgis"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    listing = subprocess.run([_qgis_process(), "list"], env=env, capture_output=True, text=True,
                             timeout=300)
    assert "geoddu:segment" in listing.stdout
    return home


def _run_qgis_process(installed_plugins, home, data, dst, model=None, **env):
    args = [_qgis_process(), "--json", "run", "geoddu:segment", "--",
            f"INPUT={data['image']}", f"MODEL={model or data['model']}", f"OUTPUT={dst}"]
    return subprocess.run(args, env=_qgis_process_env(installed_plugins, home, **env),
                          capture_output=True, text=True, timeout=600)


def _json_out(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def test_qgis_process_with_the_cli(installed_plugins, qgis_process_home, data, geoddu_cli,
                                   tmp_path):
    dst = str(tmp_path / "qp-cli.tif")
    done = _run_qgis_process(installed_plugins, qgis_process_home, data, dst,
                             GEODDU_ENGINE="cli", GEODDU_CLI=geoddu_cli)
    assert done.returncode == 0, done.stdout + done.stderr
    result = _json_out(done.stdout)["results"]
    assert result == {"OUTPUT": dst, "ENGINE": "cli"}
    assert _georef(dst)["transform"] == pytest.approx(GEOTRANSFORM)


def test_qgis_process_with_geoddu_in_qgis_python(installed_plugins, qgis_process_home, data,
                                                 python_env, tmp_path):
    """Set-up ``import``: geoddu importable in QGIS's Python (here via PYTHONPATH)."""
    sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis.discovery import env_site_packages

    site_packages = env_site_packages(python_env)
    assert site_packages, python_env
    dst = str(tmp_path / "qp-import.tif")
    done = _run_qgis_process(installed_plugins, qgis_process_home, data, dst,
                             GEODDU_ENGINE="import", PYTHONPATH=site_packages)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _json_out(done.stdout)["results"] == {"OUTPUT": dst, "ENGINE": "import"}
    out = _georef(dst)
    assert out["size"] == (HEIGHT, WIDTH) and out["count"] == 1
    assert out["transform"] == pytest.approx(GEOTRANSFORM)


def test_qgis_process_with_a_configured_python_env(installed_plugins, qgis_process_home, data,
                                                   python_env, tmp_path):
    dst = str(tmp_path / "qp-env.tif")
    done = _run_qgis_process(installed_plugins, qgis_process_home, data, dst,
                             GEODDU_PYTHON_ENV=python_env)  # auto: import fails, env works
    assert done.returncode == 0, done.stdout + done.stderr
    assert _json_out(done.stdout)["results"] == {"OUTPUT": dst, "ENGINE": "env"}


def test_qgis_process_reports_engine_errors(installed_plugins, qgis_process_home, data,
                                            geoddu_cli, tmp_path):
    dst = str(tmp_path / "qp-error.tif")
    done = _run_qgis_process(installed_plugins, qgis_process_home, data, dst,
                             model=data["bad_model"], GEODDU_ENGINE="cli", GEODDU_CLI=geoddu_cli)
    assert done.returncode != 0
    assert data["bad_model"] in done.stdout + done.stderr
    assert "checkpoint" in done.stdout + done.stderr
    assert not os.path.exists(dst)


# --- the desktop application ---------------------------------------------------------------------

GUI_SCRIPT = r'''
import json, traceback
from qgis.PyQt.QtCore import QTimer
from qgis.PyQt.QtWidgets import QApplication
from qgis.core import QgsProject
from qgis.utils import iface, plugins
import processing

PARAMS = json.loads(__PARAMS__)
state = {"polls": 0}
report = {}

def finish(code):
    with open(PARAMS["report"], "w") as out:
        json.dump(report, out)
    QApplication.exit(code)

def guarded(fn):
    def run():
        try:
            fn()
        except Exception:
            report["error"] = traceback.format_exc()
            finish(1)
    return run

@guarded
def open_dialog():
    report["plugins"] = sorted(plugins)
    report["raster_menu"] = [a.text() for a in iface.rasterMenu().actions()]
    state["dialog"] = processing.createAlgorithmDialog("geoddu:segment", {
        "INPUT": PARAMS["image"], "MODEL": PARAMS["model"], "OUTPUT": PARAMS["output"]})
    state["dialog"].show()
    QTimer.singleShot(1000, run_algorithm)

@guarded
def run_algorithm():
    state["dialog"].grab().save(PARAMS["screenshot"])
    state["dialog"].runAlgorithm()  # what the Run button does: a background task
    QTimer.singleShot(500, poll)

@guarded
def poll():
    layers = [l for l in QgsProject.instance().mapLayers().values()
              if l.source() == PARAMS["output"]]
    state["polls"] += 1
    if not layers and state["polls"] < 240:
        QTimer.singleShot(500, poll)
        return
    if layers:
        renderer = layers[0].renderer()
        report["renderer"] = renderer.type()
        report["classes"] = [[int(c.value), c.label, c.color.name()]
                             for c in renderer.classes()]
    state["dialog"].close()
    del layers
    finish(0)

QTimer.singleShot(2000, open_dialog)
'''


def test_desktop_qgis_runs_the_dialog_and_styles_the_result(installed_plugins, data, geoddu_cli,
                                                            tmp_path):
    """The real QGIS desktop under Xvfb: the plugin loads from the zip, adds its Raster menu
    entry, and the algorithm dialog runs in the background and loads the styled class map."""
    xvfb_run = shutil.which("xvfb-run")
    qgis = shutil.which("qgis")
    if not xvfb_run or not qgis:
        missing("xvfb-run and qgis are needed (Debian packages xvfb, xauth, qgis)")
    profiles = tmp_path / "profiles"
    ini = profiles / "profiles" / "default" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[PythonPlugins]\ngeoddu_qgis=true\n\n[qgis]\nshowTips=false\n")
    params = {"image": data["image"], "model": data["model"],
              "output": str(tmp_path / "gui-out.tif"), "report": str(tmp_path / "report.json"),
              "screenshot": str(tmp_path / "dialog.png")}
    script = tmp_path / "script.py"
    script.write_text(GUI_SCRIPT.replace("__PARAMS__", repr(json.dumps(params))))
    env = _qgis_process_env(installed_plugins, tmp_path, GEODDU_ENGINE="cli",
                            GEODDU_CLI=geoddu_cli)
    env.pop("QT_QPA_PLATFORM")  # a real X server (Xvfb) this time
    done = subprocess.run(
        [xvfb_run, "-a", "-s", "-screen 0 1280x800x24", qgis, "--nologo", "--noversioncheck",
         "--profiles-path", str(profiles), "--code", str(script)],
        env=env, capture_output=True, text=True, timeout=300)
    assert os.path.exists(params["report"]), done.stdout + done.stderr
    with open(params["report"]) as stream:
        report = json.load(stream)
    assert "error" not in report, report["error"]
    assert "geoddu_qgis" in report["plugins"]
    assert "geoddu" in report["raster_menu"]
    assert os.path.getsize(params["screenshot"]) > 0
    assert report.get("renderer") == "paletted", report
    assert report["classes"] == [
        [i, c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"])]
        for i, c in enumerate(data["classes"])]
