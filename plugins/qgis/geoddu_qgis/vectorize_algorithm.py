"""The Processing algorithm ``geoddu:vectorize``: a class map into polygons, as `geoddu
vectorize` does it (window by window, regions cut by window borders merged)."""

from __future__ import annotations

import traceback

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from . import engine_bridge, settings
from .algorithm import docs_url, make_folders
from .algorithm import remove_folders as remove_made_folders
from .algorithm_base import GeodduAlgorithm
from .discovery import find_engine
from .styling import ClassPolygonStyler, read_classes


class VectorizeAlgorithm(GeodduAlgorithm):
    INPUT = "INPUT"
    MIN_AREA = "MIN_AREA"
    SIMPLIFY = "SIMPLIFY"
    OUTPUT = "OUTPUT"
    ENGINE = "ENGINE"

    def name(self):
        return "vectorize"

    def displayName(self):  # noqa: N802
        return self.tr("Vectorize class map")

    def shortDescription(self):  # noqa: N802
        return self.tr("Turns a class map into one polygon per connected region.")

    def helpUrl(self):  # noqa: N802
        return docs_url("vectorize-class-map")

    def shortHelpString(self):  # noqa: N802
        # Plain text: one paragraph per line in the dialog, printed as is by qgis_process help.
        return self.tr(
            "Polygonises a class map (the output of Segment raster, or any single-band integer "
            "raster) the way geoddu vectorize does: window by window, so memory does not grow "
            "with the map, and the pieces of a region cut by window borders are merged, so "
            "every connected region (4-connectivity) is one polygon.\n"
            "\n"
            "Class map (INPUT): the class raster; nodata makes no polygon.\n"
            "Merge regions smaller than (MIN_AREA): square map units (m² in a metric CRS); "
            "smaller regions are first merged into their largest neighbour, exactly, over the "
            "whole map (0: none).\n"
            "Simplify borders by (SIMPLIFY): tolerance in map units; each border shared by two "
            "regions is simplified once, so neighbours stay glued: no gaps, no overlaps (0: "
            "none).\n"
            "Polygons (OUTPUT): GeoPackage, GeoJSON, FlatGeobuf or Shapefile, in the map's "
            "CRS, with the columns class_id and class_name (from the map's class names); "
            "added to the project coloured and labelled by class.\n"
            "\n"
            "Outputs: the polygons and ENGINE, the engine set-up that ran (import, env or cli). "
            "Cancelling stops between windows and leaves no output file; so does a failure."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class map")))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_AREA, self.tr("Merge regions smaller than (map units², 0: none)"),
            QgsProcessingParameterNumber.Double, defaultValue=0.0, optional=True, minValue=0.0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SIMPLIFY, self.tr("Simplify borders by (map units, 0: none)"),
            QgsProcessingParameterNumber.Double, defaultValue=0.0, optional=True, minValue=0.0))
        output = QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Polygons"), QgsProcessing.TypeVectorPolygon)
        output.setSupportsNonFileBasedOutput(False)  # the engine writes a file
        self.addParameter(output)
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = self.input_raster(parameters, context)
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        min_area = self.parameterAsDouble(parameters, self.MIN_AREA, context) or None
        simplify = self.parameterAsDouble(parameters, self.SIMPLIFY, context) or None

        try:
            engine = find_engine(**settings.engine_settings())
        except engine_bridge.EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(self.tr("Engine: {}").format(engine.description))
        made = make_folders([dst])
        stages = engine_bridge.vector_stages(min_area, simplify)
        seen = []
        overall = engine_bridge.OverallPercent(stages)

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in seen:  # one line per stage, not per window
                seen.append(stage)
                steps = self.tr("1 step") if total == 1 else self.tr("{} steps").format(total)
                feedback.setProgressText(self.tr("geoddu: {} ({})").format(stage, steps))
            feedback.setProgress(overall(stage, done, total))

        feedback.setProgressText(self.tr("geoddu: polygons"))
        try:
            dst = engine.vectorize(src, dst, min_area=min_area, simplify=simplify,
                                   progress=progress, cancel=feedback.isCanceled,
                                   log=feedback.pushConsoleInfo)
        except engine_bridge.EngineError as exc:
            # The engine left nothing at the output; the folders made for it go too.
            remove_made_folders(made)
            if exc.details and not isinstance(exc, engine_bridge.EngineCancelled):
                feedback.pushDebugInfo(exc.details)
            raise QgsProcessingException(str(exc)) from None
        except Exception as exc:  # a bug: still a one-line error
            remove_made_folders(made)
            feedback.pushDebugInfo(traceback.format_exc())
            raise QgsProcessingException(
                str(engine_bridge.EngineError(f"{type(exc).__name__}: {exc}"))) from None
        feedback.setProgress(100)
        if context.willLoadLayerOnCompletion(dst):
            details = context.layerToLoadOnCompletionDetails(dst)
            details.setPostProcessor(ClassPolygonStyler.create(read_classes(src)))
        return {self.OUTPUT: dst, self.ENGINE: engine.kind}
