"""The Processing algorithm ``geoddu:segment``: a thin front over the geoddu engine."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProviderRegistry,
)
from qgis.PyQt.QtCore import QCoreApplication

from . import engine_bridge, settings
from .icons import plugin_icon
from .styling import ClassMapStyler, read_classes

DEVICES = ["cpu", "cuda"]


class SegmentAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    DEVICE = "DEVICE"
    GPUS = "GPUS"
    SUBIMAGE_SIZE = "SUBIMAGE_SIZE"
    OUTPUT = "OUTPUT"
    ENGINE = "ENGINE"

    def tr(self, text: str) -> str:
        return QCoreApplication.translate("SegmentAlgorithm", text)

    def createInstance(self):  # noqa: N802 (Qt naming)
        return SegmentAlgorithm()

    def name(self):
        return "segment"

    def displayName(self):  # noqa: N802
        return self.tr("Segment raster (DDU-Net)")

    def shortDescription(self):  # noqa: N802
        return self.tr("Segments a raster into a class map with a DDU-Net checkpoint.")

    def icon(self):
        return plugin_icon()

    def shortHelpString(self):  # noqa: N802
        return self.tr(
            "Segments a raster, however large, into a land-cover class map with a geoddu "
            "(DDU-Net) checkpoint. The image is cut into subimages that exchange features, so "
            "the result has no tile seams.\n\n"
            "<b>Input raster</b>: the image; its band count must match the checkpoint's input "
            "channels.\n"
            "<b>Checkpoint</b>: a .pt file written by geoddu (train or init).\n"
            "<b>Device</b>: cpu, or cuda for NVIDIA GPUs; <b>GPUs</b>: how many GPUs to spread "
            "the subimages over (0: the engine's default).\n"
            "<b>Subimage size</b>: pixels per subimage side (0: the checkpoint's).\n"
            "<b>Class map</b>: a GeoTIFF (uint8, nodata 255) with the input's CRS and "
            "transform; it is added to the project with the checkpoint's class colours and "
            "names.\n\n"
            "The engine is geoddu imported in QGIS's Python, a configured Python environment, or "
            "the geoddu command (Processing > Options > Providers > geoddu)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Checkpoint"), behavior=QgsProcessingParameterFile.File,
            fileFilter="geoddu checkpoints (*.pt *.pth *.ckpt);;All files (*.*)"))
        device = QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), options=DEVICES,
                                            defaultValue=DEVICES[0])
        device.setUsesStaticStrings(True)  # so that qgis_process takes --DEVICE=cuda
        self.addParameter(device)
        gpus = QgsProcessingParameterNumber(
            self.GPUS, self.tr("GPUs (0: engine default)"), QgsProcessingParameterNumber.Integer,
            defaultValue=0, optional=True, minValue=0)
        size = QgsProcessingParameterNumber(
            self.SUBIMAGE_SIZE, self.tr("Subimage size in pixels (0: the checkpoint's)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, optional=True, minValue=0)
        for param in (gpus, size):
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Class map")))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        src = raster_path(layer)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) or DEVICES[0]
        gpus = self.parameterAsInt(parameters, self.GPUS, context) or None
        subimage_size = self.parameterAsInt(parameters, self.SUBIMAGE_SIZE, context) or None
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        if os.path.dirname(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)

        try:
            engine = engine_bridge.find_engine(**settings.engine_settings())
        except engine_bridge.EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(self.tr("Engine: {}").format(engine.description))

        def progress(stage: str, done: int, total: int) -> None:
            feedback.setProgressText(f"{stage} {done}/{total}")
            feedback.setProgress(engine_bridge.overall_percent(stage, done, total))

        try:
            output = engine.segment(src, dst, model, device=device, gpus=gpus,
                                    subimage_size=subimage_size, progress=progress,
                                    cancel=feedback.isCanceled, log=feedback.pushConsoleInfo)
        except engine_bridge.EngineCancelled as exc:
            raise QgsProcessingException(str(exc)) from None
        except engine_bridge.EngineError as exc:
            if exc.details:
                feedback.pushDebugInfo(exc.details)
            raise QgsProcessingException(str(exc)) from None
        feedback.setProgress(100)

        if context.willLoadLayerOnCompletion(dst):
            classes = read_classes(output)
            details = context.layerToLoadOnCompletionDetails(dst)
            details.setPostProcessor(ClassMapStyler.create(classes))
        return {self.OUTPUT: output, self.ENGINE: engine.kind}


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
