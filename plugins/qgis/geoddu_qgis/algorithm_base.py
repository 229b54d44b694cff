"""What every geoddu Processing algorithm shares: its group, icon, translation, cloning and
names; finding the engine; stage progress; engine errors as one-line Processing errors; and how
it turns its INPUT raster into a file path for the engine."""

from __future__ import annotations

import contextlib
import os
import traceback
from collections.abc import Callable, Iterator, Sequence

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
    QgsProviderRegistry,
)
from qgis.PyQt.QtCore import QCoreApplication

from . import engine_bridge, settings
from .discovery import find_engine
from .icons import plugin_icon

GROUP, GROUP_ID = "DDU-Net", "ddunet"
#: The project's repository (metadata.txt names the same); the docs are its docs/ folder.
REPOSITORY = "https://github.com/geoddu/geoddu"


def docs_url(anchor: str = "") -> str:
    """The plugin's documentation page (docs/qgis.md in the repository), at ``anchor``."""
    return f"{REPOSITORY}/blob/main/docs/qgis.md" + (f"#{anchor}" if anchor else "")


class GeodduAlgorithm(QgsProcessingAlgorithm):
    """The Processing boilerplate, once; subclasses set their ``NAME``, ``TITLE``,
    ``DESCRIPTION``, ``HELP`` (naming every parameter) and ``HELP_ANCHOR`` (a section of
    docs/qgis.md), and run themselves."""

    NAME = TITLE = DESCRIPTION = HELP_ANCHOR = HELP = ""
    # Parameter and output names every algorithm (or both polygon writers) uses alike.
    INPUT, OUTPUT, ENGINE = "INPUT", "OUTPUT", "ENGINE"
    MIN_AREA, SIMPLIFY = "MIN_AREA", "SIMPLIFY"
    MEMORY_LIMIT = "MEMORY_LIMIT"

    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.tr(self.TITLE)

    def shortDescription(self):  # noqa: N802
        return self.tr(self.DESCRIPTION)

    def helpUrl(self):  # noqa: N802
        return docs_url(self.HELP_ANCHOR)

    def shortHelpString(self):  # noqa: N802
        # Plain text: the dialog shows each line as a paragraph, and `qgis_process help`
        # prints it as it is.
        return self.tr(self.HELP)

    def tr(self, text: str) -> str:
        return QCoreApplication.translate(type(self).__name__, text)

    def createInstance(self):  # noqa: N802 (Qt naming)
        return type(self)()

    def group(self):
        return self.tr(GROUP)

    def groupId(self):  # noqa: N802
        return GROUP_ID

    def icon(self):
        return plugin_icon()

    def add_advanced(self, *parameters) -> None:
        """Add ``parameters`` under the dialog's Advanced Parameters."""
        for param in parameters:
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)

    def polygon_parameters(self, min_area: str, simplify: str) -> list:
        """MIN_AREA and SIMPLIFY (map units; 0: none), as `geoddu vectorize` takes them."""
        return [QgsProcessingParameterNumber(name, self.tr(label),
                                             QgsProcessingParameterNumber.Double,
                                             defaultValue=0.0, optional=True, minValue=0.0)
                for name, label in ((self.MIN_AREA, min_area), (self.SIMPLIFY, simplify))]

    def memory_limit_parameter(self):
        """MEMORY_LIMIT (advanced): what `--memory-limit` takes, e.g. 1G or 800M."""
        param = QgsProcessingParameterString(
            self.MEMORY_LIMIT, self.tr("Memory limit, e.g. 1G or 800M (empty: none)"),
            optional=True)
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        return param

    def memory_limit(self, parameters, context) -> str | None:
        return (self.parameterAsString(parameters, self.MEMORY_LIMIT, context) or "").strip() \
            or None

    def polygon_options(self, parameters, context) -> tuple[float | None, float | None]:
        """(min_area, simplify) for the engine, None where 0."""
        return (self.parameterAsDouble(parameters, self.MIN_AREA, context) or None,
                self.parameterAsDouble(parameters, self.SIMPLIFY, context) or None)

    def find_engine(self, feedback) -> engine_bridge.Engine:
        """The engine the settings choose, said in the log; a one-line error if none."""
        try:
            engine = find_engine(**settings.engine_settings())
        except engine_bridge.EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(self.tr("Engine: {}").format(engine.description))
        return engine

    def stage_progress(self, feedback, stages: Sequence[str], start: float = 0.0,
                       span: float = 100.0) -> Callable[[str, int, int], None]:
        """The engine's ``progress(stage, done, total)`` as the share [start, start + span] of
        the bar, with one line of text per stage (not per subimage or window)."""
        overall = engine_bridge.OverallPercent(stages)
        seen: set[str] = set()

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in seen:
                seen.add(stage)
                steps = self.tr("1 step") if total == 1 else self.tr("{} steps").format(total)
                feedback.setProgressText(self.tr("geoddu: {} ({})").format(stage, steps))
            feedback.setProgress(start + span * overall(stage, done, total) / 100.0)

        return progress

    @contextlib.contextmanager
    def engine_errors(self, feedback, discard: Callable[[], None],
                      cancelled: Callable[[], str] | None = None) -> Iterator[None]:
        """Any failure as a one-line QgsProcessingException, after ``discard()`` removed what
        the run left; the details (a traceback, the command's last lines) go to the log.
        ``cancelled()``: the message of a cancelled run, which then discards what it needs
        itself."""
        try:
            yield
        except engine_bridge.EngineError as exc:
            if cancelled is not None and isinstance(exc, engine_bridge.EngineCancelled):
                raise QgsProcessingException(cancelled()) from None
            discard()
            if exc.details and not isinstance(exc, engine_bridge.EngineCancelled):
                feedback.pushDebugInfo(exc.details)
            raise QgsProcessingException(str(exc)) from None
        except QgsProcessingException:
            discard()
            raise
        except Exception as exc:  # a bug: still a one-line error, and still nothing left
            discard()
            feedback.pushDebugInfo(traceback.format_exc())
            raise QgsProcessingException(
                str(engine_bridge.EngineError(f"{type(exc).__name__}: {exc}"))) from None

    def log_model_card(self, engine: engine_bridge.Engine, model: str, feedback) -> None:
        """The checkpoint's model card in the log, as ``geoddu card --text`` (and ``geoddu
        info -m``) shows it. A card that cannot be read is one line and the run goes on: the
        run itself says what is wrong with the checkpoint."""
        try:
            text = engine.model_card(model, log=feedback.pushConsoleInfo)
        except engine_bridge.EngineError as exc:
            feedback.pushInfo(self.tr("Model card: {}").format(exc))
            return
        for line in text.splitlines():
            feedback.pushInfo(line)

    def input_raster(self, parameters, context, name: str = "INPUT") -> str:
        """The path of the INPUT raster. A file QGIS cannot open as a layer is still handed to
        the engine, which may read it (TIFFs only tifffile reads) or says in one line why not."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is not None:
            return raster_path(layer)
        src = existing_file(parameters.get(name))
        if src is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, name))
        return src


def existing_file(value) -> str | None:
    """``value`` if it is the path of an existing file, else None."""
    if isinstance(value, str) and value and os.path.isfile(value):
        return value
    return None


def raster_path(layer) -> str:
    """The file behind a GDAL raster layer (without any ``|option`` suffix)."""
    source = layer.source()
    if layer.providerType() == "gdal":
        parts = QgsProviderRegistry.instance().decodeUri("gdal", source)
        return parts.get("path") or source
    raise QgsProcessingException(
        f"geoddu reads raster files through GDAL; layer {layer.name()!r} comes from the "
        f"{layer.providerType()!r} provider. Save it as a GeoTIFF first."
    )
