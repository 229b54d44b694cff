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


def recording_feedback():
    """A QgsProcessingFeedback class that records progress, messages and errors, and cancels
    itself after ``cancel_after`` progress steps or at the first message (info or progress
    text) matching the regular expression ``cancel_at``."""
    import re

    from qgis.core import QgsProcessingFeedback

    class RecordingFeedback(QgsProcessingFeedback):
        def __init__(self, cancel_after: int | None = None, cancel_at: str | None = None):
            super().__init__()
            self.progress_values: list[float] = []
            self.messages: list[str] = []
            self.errors: list[str] = []
            self.cancel_after, self.cancel_at = cancel_after, cancel_at
            self.progressChanged.connect(self._on_progress)

        def _on_progress(self, value: float) -> None:
            self.progress_values.append(value)
            if self.cancel_after is not None and len(self.progress_values) >= self.cancel_after:
                self.cancel()

        def _message(self, text: str) -> None:
            self.messages.append(text)
            if self.cancel_at and re.search(self.cancel_at, text):
                self.cancel()

        def pushInfo(self, info):  # noqa: N802
            self._message(info)

        def setProgressText(self, text):  # noqa: N802
            self._message(text)

        def reportError(self, error, fatalError=False):  # noqa: N802, N803
            self.errors.append(error)

    return RecordingFeedback


def georef(path: str) -> dict:
    """A class map's grid, CRS, type, nodata, class names and values, read with GDAL."""
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


def model_step(model, algorithm: str, child_id: str, sources: dict, outputs: dict | None = None):
    """Add ``algorithm`` to the Processing model ``model`` as the step ``child_id``, its
    parameters from ``sources`` (name: QgsProcessingModelChildParameterSource), and its outputs
    ``outputs`` (its output name: (model output name, description)) as the model's."""
    from qgis.core import QgsProcessingModelChildAlgorithm, QgsProcessingModelOutput

    child = QgsProcessingModelChildAlgorithm(algorithm)
    child.setChildId(child_id)
    for name, source in sources.items():
        child.addParameterSources(name, [source])
    exposed = {}
    for child_output, (name, description) in (outputs or {}).items():
        output = QgsProcessingModelOutput(name, description)
        output.setChildId(child_id)
        output.setChildOutputName(child_output)
        exposed[name] = output
    child.setModelOutputs(exposed)
    model.addChildAlgorithm(child)
    return child


def recording_command(folder: Path, command: str) -> tuple[str, Path]:
    """A stand-in for ``command`` (sh, in ``folder``) that records its arguments (``argv``,
    one a line) and its stdin (``stdin.json``) in the returned record folder, then runs the
    real one with both."""
    import shlex

    record = folder / "record"
    record.mkdir()
    script = folder / "recording geoddu"
    script.write_text(
        "#!/bin/sh\n"
        f'printf "%s\\n" "$@" > {shlex.quote(str(record / "argv"))}\n'
        f'tee {shlex.quote(str(record / "stdin.json"))} | exec {shlex.quote(command)} "$@"\n')
    script.chmod(0o755)
    return str(script), record
