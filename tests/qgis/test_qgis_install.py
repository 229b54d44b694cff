"""The plugin as users install and run it outside the Python console: engine discovery and the
plugin's settings, the zip from build_zip.py, ``qgis_process`` through each engine set-up
(``import`` among them) and the desktop application's dialog under Xvfb."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from qgis_testdata import GEOTRANSFORM, HEIGHT, PLUGIN_PARENT, WIDTH, georef, missing


def _run(params, feedback):
    import processing

    return processing.run("geoddu:segment", params, feedback=feedback)


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
    assert georef(dst)["transform"] == pytest.approx(GEOTRANSFORM)


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
    out = georef(dst)
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
    hardware()

@guarded
def hardware():
    """Plugins > geoddu > Hardware and precision…, from the real menu."""
    menu = next(a.menu() for a in iface.pluginMenu().actions() if a.text() == "geoddu")
    report["plugin_menu"] = [a.text() for a in menu.actions()]
    next(a for a in menu.actions() if a.text() == "Hardware and precision…").trigger()
    state["polls"] = 0
    QTimer.singleShot(500, poll_hardware)

@guarded
def poll_hardware():
    box = plugins["geoddu_qgis"].hardware_box
    state["polls"] += 1
    if box is None and state["polls"] < 240:
        QTimer.singleShot(500, poll_hardware)
        return
    report["hardware"] = box.text() if box is not None else None
    finish(0)

QTimer.singleShot(2000, open_dialog)
'''


def test_desktop_qgis_runs_the_dialog_and_styles_the_result(installed_plugins, data, geoddu_cli,
                                                            tmp_path):
    """The real QGIS desktop under Xvfb: the plugin loads from the zip, adds its Raster menu
    entry, and the algorithm dialog runs in the background and loads the styled class map;
    then Plugins > geoddu > Hardware and precision… shows the engine's hardware report."""
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
                            GEODDU_CLI=geoddu_cli, GEODDU_CACHE_DIR=str(tmp_path / "cache"))
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
    # The hardware action sits next to "Set up engine…" and shows the engine's report.
    assert report["plugin_menu"] == ["Set up engine…", "Hardware and precision…"]
    assert report["hardware"] and "Auto precision: " in report["hardware"]
