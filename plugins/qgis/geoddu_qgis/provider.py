"""The Processing provider ``geoddu``."""

from qgis.core import QgsProcessingProvider

from . import settings
from .accuracy_algorithms import AssessAlgorithm, SampleAlgorithm
from .algorithm import SegmentAlgorithm
from .card_algorithm import ModelCardAlgorithm
from .icons import plugin_icon
from .train_algorithm import TrainAlgorithm
from .vectorize_algorithm import VectorizeAlgorithm


class GeodduProvider(QgsProcessingProvider):
    def id(self):
        return "geoddu"

    def name(self):
        return "geoddu"

    def longName(self):  # noqa: N802 (Qt naming)
        return "geoddu: DDU-Net training, segmentation and vectorization of large rasters"

    def icon(self):
        return plugin_icon()

    def load(self):
        settings.register()
        self.refreshAlgorithms()
        return True

    def unload(self):
        settings.unregister()

    def loadAlgorithms(self):  # noqa: N802
        for algorithm in (SegmentAlgorithm(), TrainAlgorithm(), VectorizeAlgorithm(),
                          SampleAlgorithm(), AssessAlgorithm(), ModelCardAlgorithm()):
            self.addAlgorithm(algorithm)

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg", "geojson", "fgb", "shp"]  # what `geoddu vectorize` writes
