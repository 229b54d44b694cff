"""Fixtures for the QGIS plugin's tests, which run in a real QGIS (QGIS's own Python).

Run them with ``plugins/qgis/run_tests.sh``: it installs QGIS from Debian's packages, builds a
Python environment for set-ups ``env``/``import``, and runs
``/usr/bin/python3 -m pytest -c tests/qgis/pytest.ini tests/qgis`` headless.

In a Python without QGIS (the project's virtualenv, where the main test suite runs) nothing here
is collected, so ``pytest tests`` is unaffected.

Environment variables:
``GEODDU_TEST_CLI``          the ``geoddu`` command (a virtualenv's); default: ``geoddu`` on PATH.
``GEODDU_TEST_PYTHON_ENV``   a Python environment for QGIS's Python (same Python version, numpy
                             pinned to QGIS's) with geoddu installed; the ``env`` and ``import``
                             tests need it.
``GEODDU_QGIS_TESTS_STRICT`` ``1``: a missing prerequisite fails the tests instead of skipping
                             them (run_tests.sh sets it).
"""

from __future__ import annotations

import importlib.util
import os

# Not just `find_spec("qgis") is not None`: with tests/ on sys.path (the main suite puts it
# there), this very folder is found as a namespace package called `qgis`. The real one is a
# regular package, with an origin.
_spec = importlib.util.find_spec("qgis")
HAVE_QGIS = _spec is not None and _spec.origin is not None

if not HAVE_QGIS:
    collect_ignore_glob = ["test_*.py"]
else:
    import gc
    import json
    import shutil
    import subprocess
    import sys

    import pytest
    from qgis_testdata import (
        BANDS,
        CLASSES,
        EPSG,
        GEOTRANSFORM,
        HEIGHT,
        PLUGIN_PARENT,
        QGIS_PLUGINS,
        SUBIMAGE,
        WIDTH,
        missing,
        recording_feedback,
    )

    @pytest.fixture(scope="session")
    def qgis_app(tmp_path_factory):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
        for path in (QGIS_PLUGINS, str(PLUGIN_PARENT)):
            if path not in sys.path:
                sys.path.insert(0 if path == str(PLUGIN_PARENT) else len(sys.path), path)
        from qgis.core import QgsApplication
        from qgis.PyQt.QtCore import QCoreApplication, QSettings

        # A throw-away profile: settings written by the tests never reach the user's QGIS.
        profile = tmp_path_factory.mktemp("qgis-profile")
        QCoreApplication.setOrganizationName("QGIS")
        QCoreApplication.setOrganizationDomain("qgis.org")
        QCoreApplication.setApplicationName("QGIS3")
        QSettings.setDefaultFormat(QSettings.IniFormat)
        QSettings.setPath(QSettings.IniFormat, QSettings.UserScope, str(profile))

        app = QgsApplication([], False, str(profile))
        app.initQgis()
        from processing.core.Processing import Processing

        Processing.initialize()
        yield app
        from qgis.core import QgsProject

        QgsProject.instance().clear()
        gc.collect()  # no layer may outlive exitQgis()
        app.exitQgis()

    @pytest.fixture(scope="session")
    def plugin(qgis_app):
        import geoddu_qgis

        instance = geoddu_qgis.classFactory(None)
        instance.initGui()  # what QGIS calls; with no iface it only registers the provider
        yield instance
        instance.unload()

    @pytest.fixture(scope="session")
    def geoddu_cli() -> str:
        cli = os.environ.get("GEODDU_TEST_CLI") or shutil.which("geoddu")
        if not cli or not os.path.isfile(cli):
            missing("no geoddu command: set GEODDU_TEST_CLI or put geoddu on PATH")
        return cli

    @pytest.fixture(scope="session")
    def python_env() -> str:
        env = os.environ.get("GEODDU_TEST_PYTHON_ENV")
        if not env or not os.path.isdir(env):
            missing("no Python environment for QGIS's Python: set GEODDU_TEST_PYTHON_ENV")
        return env

    @pytest.fixture(scope="session")
    def data(tmp_path_factory, geoddu_cli, qgis_app) -> dict:
        """A small georeferenced GeoTIFF (written with GDAL) and a checkpoint from geoddu init."""
        import numpy as np
        from osgeo import gdal, osr

        folder = tmp_path_factory.mktemp("data")
        image = folder / "scene.tif"
        ds = gdal.GetDriverByName("GTiff").Create(str(image), WIDTH, HEIGHT, BANDS,
                                                  gdal.GDT_Byte)
        ds.SetGeoTransform(GEOTRANSFORM)
        srs = osr.SpatialReference()
        srs.ImportFromEPSG(EPSG)
        ds.SetProjection(srs.ExportToWkt())
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
        for b in range(BANDS):
            pattern = (xx * (b + 1) + yy * (3 - b)) % 256
            noise = rng.integers(0, 40, (HEIGHT, WIDTH))
            ds.GetRasterBand(b + 1).WriteArray(((pattern + noise) % 256).astype(np.uint8))
        ds = None

        classes_file = folder / "classes.json"
        classes_file.write_text(json.dumps(CLASSES))
        model = folder / "model.pt"
        subprocess.run(
            [geoddu_cli, "init", "-o", str(model), "--in-channels", str(BANDS),
             "--classes-file", str(classes_file), "--depth", "2", "--base-channels", "4",
             "--comm-features", "4", "--subimage-size", str(SUBIMAGE)],
            check=True, capture_output=True, text=True,
        )
        bad_model = folder / "not-a-checkpoint.pt"
        bad_model.write_text("this is not a checkpoint\n")
        return {"image": str(image), "model": str(model), "bad_model": str(bad_model),
                "classes": CLASSES, "folder": folder}

    @pytest.fixture
    def engine_mode(monkeypatch, geoddu_cli):
        """Select the engine set-up for one test through the plugin's environment variables."""

        def select(mode: str, python_env: str | None = None) -> None:
            monkeypatch.setenv("GEODDU_ENGINE", mode)
            monkeypatch.setenv("GEODDU_CLI", geoddu_cli)
            if python_env:
                monkeypatch.setenv("GEODDU_PYTHON_ENV", python_env)
            else:
                monkeypatch.delenv("GEODDU_PYTHON_ENV", raising=False)

        return select

    @pytest.fixture(params=["cli", "env"])
    def mode(request, engine_mode):
        """Each engine set-up a test runs through: ``cli`` (the geoddu command) and ``env``
        (a configured Python environment, imported in-process)."""
        if request.param == "env":
            engine_mode("env", request.getfixturevalue("python_env"))
        else:
            engine_mode(request.param)
        return request.param

    @pytest.fixture
    def feedback_cls(qgis_app):
        """:func:`qgis_testdata.recording_feedback`'s class."""
        return recording_feedback()
