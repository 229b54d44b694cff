"""The Processing algorithm ``geoddu:segment``: a thin front over the geoddu engine."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
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
PRECISIONS = ["fp32", "bf16", "fp16"]


class SegmentAlgorithm(QgsProcessingAlgorithm):
    INPUT = "INPUT"
    MODEL = "MODEL"
    BANDS = "BANDS"
    DEVICE = "DEVICE"
    GPUS = "GPUS"
    PRECISION = "PRECISION"
    SUBIMAGE_SIZE = "SUBIMAGE_SIZE"
    OUTPUT = "OUTPUT"
    PROBABILITIES = "PROBABILITIES"
    CONFIDENCE = "CONFIDENCE"
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
            "<b>Input raster</b>: the image (any raster file GDAL reads).\n"
            "<b>Checkpoint</b>: a .pt file written by geoddu (train or init).\n"
            "<b>Bands</b>: the input bands to use, in the model's order (none: the "
            "checkpoint's).\n"
            "<b>Device</b>: cpu, or cuda for an NVIDIA GPU. <b>GPUs</b>: spread the subimages "
            "over this many CUDA devices (0: just the device).\n"
            "<b>Precision</b>: fp32, or bf16/fp16 mixed precision (fp16 needs CUDA).\n"
            "<b>Subimage size</b>: pixels per subimage side (0: the checkpoint's).\n"
            "<b>Class map</b>: a GeoTIFF (uint8, nodata 255) with the input's CRS and "
            "transform; it is added to the project with the checkpoint's class colours and "
            "names.\n"
            "<b>Probabilities</b>, <b>Confidence</b> (optional): float32 GeoTIFFs with one "
            "band per class, and the highest class probability.\n\n"
            "The engine is geoddu imported in QGIS's Python, a configured Python environment, or "
            "the geoddu command (Processing > Options > Providers > geoddu)."
        )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Input raster")))
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Checkpoint"), behavior=QgsProcessingParameterFile.File,
            fileFilter="geoddu checkpoints (*.pt *.pth *.ckpt);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterBand(
            self.BANDS, self.tr("Bands (none: the checkpoint's)"), None, self.INPUT,
            optional=True, allowMultiple=True))
        device = QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), options=DEVICES,
                                            defaultValue=DEVICES[0])
        device.setUsesStaticStrings(True)  # so that qgis_process takes --DEVICE=cuda
        self.addParameter(device)
        gpus = QgsProcessingParameterNumber(
            self.GPUS, self.tr("GPUs to spread the work over (0: just the device)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, optional=True, minValue=0)
        precision = QgsProcessingParameterEnum(
            self.PRECISION, self.tr("Precision"), options=PRECISIONS, defaultValue=PRECISIONS[0])
        precision.setUsesStaticStrings(True)
        size = QgsProcessingParameterNumber(
            self.SUBIMAGE_SIZE, self.tr("Subimage size in pixels (0: the checkpoint's)"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, optional=True, minValue=0)
        for param in (gpus, precision, size):
            param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
            self.addParameter(param)
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Class map")))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.PROBABILITIES, self.tr("Class probabilities"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.CONFIDENCE, self.tr("Confidence"), optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        if layer is None:
            raise QgsProcessingException(self.invalidRasterError(parameters, self.INPUT))
        src = raster_path(layer)
        model = self.parameterAsFile(parameters, self.MODEL, context)
        bands = self.parameterAsInts(parameters, self.BANDS, context) or None
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) or DEVICES[0]
        gpus = self.parameterAsInt(parameters, self.GPUS, context) or None
        if gpus:
            device = None  # GPUs > 0 means CUDA devices 0..N-1, whatever the device says
        precision = self.parameterAsEnumString(parameters, self.PRECISION, context) or None
        subimage_size = self.parameterAsInt(parameters, self.SUBIMAGE_SIZE, context) or None
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        extra = {key: self.parameterAsOutputLayer(parameters, name, context) or None
                 for key, name in (("probabilities", self.PROBABILITIES),
                                   ("confidence", self.CONFIDENCE))}
        for path in (dst, *extra.values()):
            if path and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)

        try:
            engine = engine_bridge.find_engine(**settings.engine_settings())
        except engine_bridge.EngineError as exc:
            raise QgsProcessingException(str(exc)) from None
        feedback.pushInfo(self.tr("Engine: {}").format(engine.description))

        stages = []

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in stages:  # one line per stage, not per subimage
                stages.append(stage)
                feedback.setProgressText(self.tr("geoddu: {} ({} steps)").format(stage, total))
            feedback.setProgress(engine_bridge.overall_percent(stage, done, total))

        try:
            output = engine.segment(src, dst, model, device=device, gpus=gpus, bands=bands,
                                    precision=precision, subimage_size=subimage_size, **extra,
                                    progress=progress, cancel=feedback.isCanceled,
                                    log=feedback.pushConsoleInfo)
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
        results = {self.OUTPUT: output, self.ENGINE: engine.kind}
        results.update({name: extra[key] for key, name in (("probabilities", self.PROBABILITIES),
                                                           ("confidence", self.CONFIDENCE))
                        if extra[key]})
        return results


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
