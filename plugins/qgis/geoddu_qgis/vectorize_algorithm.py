"""The Processing algorithm ``geoddu:vectorize``: a class map into polygons, as `geoddu
vectorize` does it (window by window, regions cut by window borders merged)."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputString,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
)

from . import engine_bridge
from .algorithm import make_folders
from .algorithm import remove_folders as remove_made_folders
from .algorithm_base import GeodduAlgorithm
from .styling import ClassPolygonStyler, read_classes


class VectorizeAlgorithm(GeodduAlgorithm):
    NAME, TITLE, HELP_ANCHOR = "vectorize", "Vectorize class map", "vectorize-class-map"
    DESCRIPTION = "Turns a class map into one polygon per connected region."
    HELP = (
        "Polygonises a class map (the output of Segment raster, or any single-band integer "
        "raster) the way geoddu vectorize does: window by window, so memory does not grow "
        "with the map, and the pieces of a region cut by window borders are merged, so "
        "every connected region (4-connectivity) is one polygon.\n"
        "\n"
        "Class map (INPUT): the class raster; nodata makes no polygon.\n"
        "Merge regions smaller than (MIN_AREA): square map units (m² in a metric CRS); "
        "smaller regions are first merged into their largest neighbour, over the whole map, "
        "with GDAL's sieve (as gdal_sieve) (0: none).\n"
        "Simplify borders by (SIMPLIFY): tolerance in map units; each border shared by two "
        "regions is simplified once, so neighbours stay glued: no gaps, no overlaps (0: "
        "none).\n"
        "Polygons (OUTPUT): GeoPackage, GeoJSON, FlatGeobuf or Shapefile, in the map's "
        "CRS, with the columns class_id and class_name (from the map's class names); "
        "added to the project coloured and labelled by class.\n"
        "Memory limit (MEMORY_LIMIT, advanced): e.g. 1G or 800M; windows are made small "
        "enough to stay under it, or the run stops naming the smallest limit that would do "
        "(geoddu vectorize --memory-limit).\n"
        "\n"
        "Outputs: the polygons and ENGINE, the engine set-up that ran (import, env or cli). "
        "Cancelling stops between windows and leaves no output file; so does a failure."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        output = QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Polygons"), QgsProcessing.TypeVectorPolygon)
        output.setSupportsNonFileBasedOutput(False)  # the engine writes a file
        sieve, simplify = self.polygon_parameters(
            "Merge regions smaller than (map units², 0: none)",
            "Simplify borders by (map units, 0: none)")
        for param in (QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class map")), sieve,
                      simplify, output, self.memory_limit_parameter()):
            self.addParameter(param)
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = self.input_raster(parameters, context)
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        min_area, simplify = self.polygon_options(parameters, context)

        engine = self.find_engine(feedback)
        made = make_folders([dst])
        feedback.setProgressText(self.tr("geoddu: polygons"))
        # The engine left nothing at the output; the folders made for it go too.
        with self.engine_errors(feedback, lambda: remove_made_folders(made)):
            dst = engine.vectorize(
                src, dst, min_area=min_area, simplify=simplify,
                memory_limit=self.memory_limit(parameters, context), cancel=feedback.isCanceled,
                progress=self.stage_progress(
                    feedback, engine_bridge.vector_stages(min_area, simplify)),
                log=feedback.pushConsoleInfo)
        feedback.setProgress(100)
        if context.willLoadLayerOnCompletion(dst):
            details = context.layerToLoadOnCompletionDetails(dst)
            details.setPostProcessor(ClassPolygonStyler.create(read_classes(src)))
        return {self.OUTPUT: dst, self.ENGINE: engine.kind}
