"""The Processing provider ``geoddu``."""

from qgis.core import QgsProcessingProvider

from . import settings
from .algorithm import SegmentAlgorithm
from .icons import plugin_icon


class GeodduProvider(QgsProcessingProvider):
    def id(self):
        return "geoddu"

    def name(self):
        return "geoddu"

    def longName(self):  # noqa: N802 (Qt naming)
        return "geoddu: DDU-Net segmentation of large rasters"

    def icon(self):
        return plugin_icon()

    def load(self):
        settings.register()
        self.refreshAlgorithms()
        return True

    def unload(self):
        settings.unregister()

    def loadAlgorithms(self):  # noqa: N802
        self.addAlgorithm(SegmentAlgorithm())

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg", "geojson", "fgb", "shp"]  # what `geoddu vectorize` writes
