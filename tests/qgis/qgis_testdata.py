"""Constants and helpers shared by the QGIS tests' conftest and test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_PARENT = ROOT / "plugins" / "qgis"
QGIS_PLUGINS = "/usr/share/qgis/python/plugins"  # where `processing` lives on Debian

#: The test checkpoint's classes: names and colours the class map must be shown with.
CLASSES = [
    {"name": "water", "color": [0, 90, 200]},
    {"name": "forest", "color": [20, 140, 40]},
    {"name": "urban", "color": [220, 30, 30]},
]
HEIGHT, WIDTH, BANDS = 96, 128, 3
GEOTRANSFORM = (500000.0, 10.0, 0.0, 4600000.0, 0.0, -10.0)
EPSG = 32631
SUBIMAGE = 32


def missing(reason: str):
    """Skip, or fail when GEODDU_QGIS_TESTS_STRICT=1 (run_tests.sh sets it)."""
    if os.environ.get("GEODDU_QGIS_TESTS_STRICT") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)
