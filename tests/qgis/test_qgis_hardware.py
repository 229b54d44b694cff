"""*Plugins > geoddu > Hardware and precision…*: the engine's hardware report through each
set-up (the geoddu command, a Python environment imported in-process), its errors, and the
plugin's action showing it (a real main window and message bar, offscreen). The desktop test
in test_qgis_install.py triggers the action from the real Plugins menu."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PRECISIONS = ("fp32", "bf16", "fp16")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    """A probe cache of this test's own (the command inherits the variable)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("GEODDU_CACHE_DIR", str(folder))
    return folder


def test_each_engine_reports_the_hardware(plugin, mode, cache):
    from geoddu_qgis import discovery, hardware_info

    engine = discovery.find_engine()
    assert engine.kind == mode
    report = engine.hardware()
    assert report["machine"]["cpu"]["logical_threads"] == os.cpu_count()
    assert report["auto"]["cpu"] in PRECISIONS
    probe = report["probes"][0]
    assert probe["device"] == "cpu" and not probe["cached"] and probe["seconds"]["fp32"] > 0
    assert report["cache"] == str(cache / "precision-probe.json")
    assert os.path.isfile(report["cache"])
    text = hardware_info.describe(report, engine.description)
    assert text.startswith(f"Engine: {engine.description}\n")
    assert f"Auto precision: {report['auto']['cpu']} (measured now" in text
    assert report["machine"]["cpu"]["model"] in text
    # Asked again, the probe comes from the cache.
    assert engine.hardware()["probes"][0]["cached"]


def test_a_checkpoint_is_timed_and_a_bad_one_is_one_line(plugin, mode, data, cache):
    from geoddu_qgis import discovery, engine_bridge, hardware_info

    engine = discovery.find_engine()
    report = engine.hardware(model=data["model"])
    [timed] = report["checkpoint"]
    assert timed["mpx_per_s"]["fp32"] > 0
    assert list(timed["mpx_per_s"]) == list(report["probes"][0]["seconds"])
    assert f"{data['model']} on cpu: Mpx/s fp32 " in hardware_info.describe(report)
    with pytest.raises(engine_bridge.EngineError, match="not a geoddu checkpoint") as caught:
        engine.hardware(model=data["bad_model"])
    assert "\n" not in str(caught.value) and data["bad_model"] in str(caught.value)


def test_a_geoddu_without_hardware_says_update(qgis_app, tmp_path):
    """An older geoddu command: click's 'No such option' becomes the plugin's one line."""
    from geoddu_qgis import engine_bridge

    old = tmp_path / "geoddu"
    old.write_text("#!/bin/sh\necho \"Error: No such option: --hardware (see 'geoddu info "
                   "--help')\" >&2\nexit 2\n")
    old.chmod(0o755)
    with pytest.raises(engine_bridge.EngineError, match="update geoddu") as caught:
        engine_bridge.CliEngine([str(old)]).hardware()
    assert str(caught.value) == engine_bridge.TOO_OLD["hardware"]


# The plugin's action needs widgets, which the session's QgsApplication (GUI off) cannot make:
# it runs in a QGIS application of its own, with its GUI on, offscreen.
ACTION_SCRIPT = r'''
import json, os, sys, time
from qgis.core import QgsApplication
from qgis.gui import QgsMessageBar
from qgis.PyQt.QtCore import QCoreApplication
from qgis.PyQt.QtWidgets import QMainWindow

app = QgsApplication([], True)
app.initQgis()
sys.path.insert(0, os.environ["PLUGIN_PARENT"])
from geoddu_qgis.plugin import GeodduPlugin


class Bar(QgsMessageBar):
    """A real message bar that also keeps what it was asked to show."""

    def __init__(self, parent):
        super().__init__(parent)
        self.shown = []

    def pushInfo(self, title, message):
        self.shown.append(message)
        super().pushInfo(title, message)

    def pushCritical(self, title, message):
        self.shown.append(message)
        super().pushCritical(title, message)


class Iface:
    """What the hardware action uses of QGIS's interface: a real window and message bar."""

    def __init__(self):
        self.window = QMainWindow()
        self.bar = Bar(self.window)

    def mainWindow(self):
        return self.window

    def messageBar(self):
        return self.bar


def click(cli):
    os.environ["GEODDU_CLI"] = cli
    iface = Iface()
    gui = GeodduPlugin(iface)
    gui.show_hardware()
    gui.show_hardware()  # a second click while it runs is told so, not run twice
    end = time.monotonic() + 300
    while gui.hardware_task is not None and time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.02)
    box = gui.hardware_box
    return {"bar": iface.bar.shown, "box": None if box is None else {
        "title": box.windowTitle(), "text": box.text(), "visible": box.isVisible(),
        "modal": box.isModal()}}


os.environ["GEODDU_ENGINE"] = "cli"
result = {"missing": click(os.environ["MISSING_CLI"]), "cli": click(os.environ["TEST_CLI"])}
print("RESULT " + json.dumps(result))
app.exitQgis()
'''


def test_the_action_shows_the_report_or_the_error(qgis_app, geoddu_cli, tmp_path):
    from geoddu_qgis import hardware_info
    from qgis_testdata import PLUGIN_PARENT

    script = tmp_path / "action.py"
    script.write_text(ACTION_SCRIPT)
    env = {**os.environ, "PLUGIN_PARENT": str(PLUGIN_PARENT), "TEST_CLI": geoddu_cli,
           "MISSING_CLI": str(tmp_path / "no-such-geoddu"), "QT_QPA_PLATFORM": "offscreen",
           "GEODDU_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                          text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout + done.stderr
    result = json.loads(lines[0][len("RESULT "):])

    missing = result["missing"]
    assert missing["box"] is None
    assert missing["bar"][:2] == ["Measuring the hardware and each precision (a few seconds, "
                                  "once per machine)…", "Already measuring the hardware."]
    assert missing["bar"][2].startswith("Hardware and precision: geoddu engine not found")

    box = result["cli"]["box"]
    assert box is not None and box["visible"] and not box["modal"]
    assert box["title"] == hardware_info.TITLE
    assert box["text"].startswith(f"Engine: geoddu command {geoddu_cli}\n")
    assert "Auto precision: " in box["text"] and "CPU: " in box["text"]
