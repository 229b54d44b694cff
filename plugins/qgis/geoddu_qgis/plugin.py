"""QGIS plugin entry: registers the Processing provider and a Raster menu entry."""

from qgis.core import QgsApplication

from .provider import GeodduProvider


class GeodduPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.action = None

    def initProcessing(self):  # noqa: N802 (QGIS naming); called by qgis_process too
        if self.provider is None:
            self.provider = GeodduProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()
        if self.iface is None:
            return
        from qgis.PyQt.QtWidgets import QAction

        from .icons import plugin_icon

        self.action = QAction(plugin_icon(), "Segment raster (DDU-Net)…",
                              self.iface.mainWindow())
        self.action.triggered.connect(self.open_dialog)
        self.iface.addPluginToRasterMenu("geoddu", self.action)

    def open_dialog(self):
        import processing

        processing.execAlgorithmDialog("geoddu:segment")

    def unload(self):
        if self.action is not None and self.iface is not None:
            self.iface.removePluginRasterMenu("geoddu", self.action)
            self.action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
