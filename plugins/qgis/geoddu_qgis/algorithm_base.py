"""What every geoddu Processing algorithm shares: its group, icon, translation and cloning."""

from __future__ import annotations

from qgis.core import QgsProcessingAlgorithm
from qgis.PyQt.QtCore import QCoreApplication

from .icons import plugin_icon

GROUP, GROUP_ID = "DDU-Net", "ddunet"


class GeodduAlgorithm(QgsProcessingAlgorithm):
    """The Processing boilerplate, once; subclasses name, describe and run themselves."""

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
