"""What every geoddu Processing algorithm shares: its group, icon, translation and cloning,
and how it turns its INPUT raster into a file path for the engine."""

from __future__ import annotations

import os

from qgis.core import QgsProcessingAlgorithm, QgsProcessingException, QgsProviderRegistry
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
