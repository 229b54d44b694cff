"""The Processing algorithm ``geoddu:segment``: a thin front over the geoddu engine."""

from __future__ import annotations

import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingOutputLayerDefinition,
    QgsProcessingOutputString,
    QgsProcessingParameterBand,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
    QgsProperty,
)

from . import engine_bridge
from .algorithm_base import GeodduAlgorithm, docs_url, existing_file, raster_path
from .engine_base import OUTPUT_GRIDS, RESAMPLINGS
from .output_guard import file_state, listdir
from .styling import ClassMapStyler, ClassPolygonStyler, read_classes

__all__ = ["DEVICES", "PRECISIONS", "SegmentAlgorithm", "docs_url", "make_folders",
           "remove_folders"]

DEVICES = ["cpu", "cuda"]
PRECISIONS = ["fp32", "bf16", "fp16", "auto"]
#: RESAMPLE's choices: off (the scene as it is), or a GDAL warp kernel (--resample METHOD).
RESAMPLE_CHOICES = ["off", *RESAMPLINGS]
#: Optional raster outputs: (request field, parameter).
EXTRA_RASTERS = (("probabilities", "PROBABILITIES"), ("confidence", "CONFIDENCE"))


class SegmentAlgorithm(GeodduAlgorithm):
    # Parameters besides INPUT, OUTPUT, MIN_AREA and SIMPLIFY: the model and how it runs, the
    # optional outputs, the area of interest.
    MODEL, BANDS, DEVICE, GPUS = "MODEL", "BANDS", "DEVICE", "GPUS"
    PRECISION, SUBIMAGE_SIZE = "PRECISION", "SUBIMAGE_SIZE"
    RESAMPLE, OUTPUT_GRID, STRICT = "RESAMPLE", "OUTPUT_GRID", "STRICT"
    PROBABILITIES, CONFIDENCE, POLYGONS = "PROBABILITIES", "CONFIDENCE", "POLYGONS"
    AOI = "AOI"
    MOSAIC_WITH, TILE_OUTPUTS = "MOSAIC_WITH", "TILE_OUTPUTS"
    NAME, TITLE, HELP_ANCHOR = "segment", "Segment raster (DDU-Net)", "segment-raster-ddu-net"
    DESCRIPTION = "Segments a raster into a class map with a DDU-Net checkpoint."
    HELP = (
        "Segments a raster, however large, into a land-cover class map with a geoddu "
        "(DDU-Net) checkpoint. The image is cut into subimages that exchange features, so "
        "the result has no tile seams.\n"
        "\n"
        "Input raster (INPUT): the image, any raster file GDAL reads.\n"
        "Checkpoint (MODEL): a .pt file written by geoddu (Train model, geoddu train, or "
        "geoddu init).\n"
        "Bands (BANDS): the input bands to use, in the model's order (none: the "
        "checkpoint's).\n"
        "Device (DEVICE): cpu, or cuda for an NVIDIA GPU.\n"
        "GPUs (GPUS, advanced): spread the subimages over this many CUDA devices (0: just "
        "the device).\n"
        "Precision (PRECISION, advanced): fp32; bf16 (on the CPU a bf16 copy of the model, "
        "about 2x faster on CPUs with AVX-512 BF16 or AMX; on CUDA mixed precision); fp16 "
        "(CUDA only); auto (the fastest on this machine, by a probe measured once and cached: "
        "Plugins > geoddu > Hardware and precision… shows it).\n"
        "Subimage size (SUBIMAGE_SIZE, advanced): pixels per subimage side (0: the "
        "checkpoint's).\n"
        "Read at the model's pixel size (RESAMPLE, advanced): off, or a GDAL warp kernel "
        "(bilinear, cubic, average, mode, ...): the input is read through a GDAL warped "
        "virtual raster at the pixel size in the checkpoint's model card, so a 0.5 m scene "
        "meets a 2 m model at 2 m (geoddu segment --resample; docs/resampling.md).\n"
        "Grid of the class map (OUTPUT_GRID, advanced, with RESAMPLE): scene (the input's "
        "CRS, transform and size; classes put back by nearest neighbour) or model (the "
        "warped grid; needed for Class probabilities and Confidence).\n"
        "Stop on another pixel size (STRICT, advanced): when the input's pixel size differs "
        "from the model's by more than 1.5x and RESAMPLE is off, stop with nothing written "
        "instead of warning (geoddu segment --strict).\n"
        "Memory limit (MEMORY_LIMIT, advanced): e.g. 1G or 800M; the run is planned to stay "
        "under it (narrower strips, then two passes), polygons too, or stops before any work "
        "naming the smallest limit that would do (geoddu segment --memory-limit).\n"
        "Segment together with (MOSAIC_WITH, optional): more raster layers (files GDAL "
        "reads: tiles or sheets of the same scene) segmented with the input as ONE seamless "
        "mosaic, through a GDAL virtual raster over their union, so sheet edges are no seams. "
        "They must share the input's CRS, resolution, pixel grid, band count, data type and "
        "nodata (else the run stops with one line saying which differ). Where they overlap, "
        "later layers are drawn over earlier ones (GDAL's VRT order): the input first, then "
        "these layers in the order given. A virtual raster (.vrt) as the input is one scene "
        "already.\n"
        "Per-tile class maps (TILE_OUTPUTS, optional, with MOSAIC_WITH): a folder that gets "
        "one class map per input, NAME.tif, each cut from the seamless result on that "
        "input's exact grid. The engine writes either the one class map over the union or the "
        "per-tile maps: with this folder the Class map is not written (leave it a temporary "
        "output or skip it; a named Class map file is refused), and Class probabilities, "
        "Confidence and Polygons are not available.\n"
        "Area of interest (AOI, optional): a polygon layer, in any CRS; only the pixels "
        "inside its polygons are segmented, the rest of the class map is nodata (255).\n"
        "Class map (OUTPUT): a GeoTIFF (uint8, nodata 255) with the input's CRS and "
        "transform (with MOSAIC_WITH: over the union of all inputs); it is added to the "
        "project with the checkpoint's class colours and "
        "names.\n"
        "Class probabilities (PROBABILITIES) and Confidence (CONFIDENCE), optional: "
        "float32 GeoTIFFs with one band per class, and the highest class probability.\n"
        "Polygons (POLYGONS, optional): the class map as polygons (GeoPackage, GeoJSON, "
        "FlatGeobuf or Shapefile), one per connected region, with class_id and "
        "class_name.\n"
        "Polygons: merge regions smaller than (MIN_AREA, advanced): square map units; "
        "smaller regions are merged into their largest neighbour first (0: none).\n"
        "Polygons: simplify borders by (SIMPLIFY, advanced): map units; shared borders "
        "are simplified once, without gaps or overlaps (0: none).\n"
        "\n"
        "Outputs: the class map or TILE_OUTPUTS (and the optional outputs asked for), and "
        "ENGINE, the "
        "engine set-up that ran (import, env or cli). Cancelling stops between subimages "
        "and leaves no output file.\n"
        "The engine is geoddu imported in QGIS's Python, a configured Python environment, "
        "or the geoddu command (Settings > Options > Processing > Providers > geoddu, or "
        "Plugins > geoddu > Set up engine)."
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
        resample = QgsProcessingParameterEnum(
            self.RESAMPLE, self.tr("Read at the model's pixel size (GDAL warp kernel)"),
            options=RESAMPLE_CHOICES, defaultValue=RESAMPLE_CHOICES[0])
        resample.setUsesStaticStrings(True)  # qgis_process takes --RESAMPLE=bilinear
        grid = QgsProcessingParameterEnum(
            self.OUTPUT_GRID, self.tr("Grid of the resampled class map"),
            options=list(OUTPUT_GRIDS), defaultValue=OUTPUT_GRIDS[0])
        grid.setUsesStaticStrings(True)
        strict = QgsProcessingParameterBoolean(
            self.STRICT, self.tr("Stop when the pixel size differs from the model's (>1.5x)"),
            defaultValue=False)
        self.add_advanced(gpus, precision, size, resample, grid, strict)
        self.addParameter(self.memory_limit_parameter())
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.AOI, self.tr("Area of interest (only these pixels; the rest is nodata)"),
            [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.MOSAIC_WITH, self.tr("Segment together with (one seamless mosaic)"),
            QgsProcessing.TypeRaster, optional=True))
        # Optional only so that it can be skipped when TILE_OUTPUTS is given (the engine
        # writes one or the other); created by default, so a plain run is as before.
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.OUTPUT, self.tr("Class map"), optional=True, createByDefault=True))
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.TILE_OUTPUTS, self.tr("Per-tile class maps (folder)"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.PROBABILITIES, self.tr("Class probabilities"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.CONFIDENCE, self.tr("Confidence"), optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterVectorDestination(
            self.POLYGONS, self.tr("Polygons"), QgsProcessing.TypeVectorPolygon, optional=True,
            createByDefault=False))
        self.add_advanced(*self.polygon_parameters(
            "Polygons: merge regions smaller than (map units², 0: none)",
            "Polygons: simplify borders by (map units, 0: none)"))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        """QGIS's checks, except that an input file QGIS cannot open goes to the engine.

        QGIS would refuse it as "... not found" (it is there); the engine reads TIFFs GDAL does
        not, and otherwise says in one line what is wrong with the file.
        """
        ok, message = super().checkParameterValues(parameters, context)
        if ok or existing_file(parameters.get(self.INPUT)) is None:
            return ok, message
        for definition in self.parameterDefinitions():
            name = definition.name()
            if name == self.INPUT or definition.checkValueIsAcceptable(parameters.get(name),
                                                                       context):
                continue
            if isinstance(definition, QgsProcessingParameterRasterLayer):
                return False, self.invalidRasterError(parameters, name)
            if isinstance(definition, QgsProcessingParameterVectorLayer):
                return False, self.invalidSourceError(parameters, name)
            return False, self.tr("Incorrect parameter value for {}").format(name)
        return True, ""

    def segment_request(self, parameters, context, feedback) -> dict:
        """The run, described once: a dict of geoddu request fields (the field names of
        ``geoddu.engine.request.SegmentRequest``; a field left out is the engine's default).

        A plain dict, not a ``SegmentRequest``: geoddu may not be importable in QGIS's Python
        (the ``cli`` route), where the dict goes to the geoddu command as JSON.
        """
        src = self.input_raster(parameters, context)
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) or DEVICES[0]
        gpus = self.parameterAsInt(parameters, self.GPUS, context) or None
        if gpus:
            device = None  # GPUs > 0 means CUDA devices 0..N-1, whatever the device says
        aoi = aoi_layer = None
        if self.parameterAsVectorLayer(parameters, self.AOI, context) is not None:
            # A file OGR reads (QGIS exports memory or unsupported layers to a temporary one).
            aoi, aoi_layer = self.parameterAsCompatibleSourceLayerPathAndLayerName(
                parameters, self.AOI, context, ["gpkg", "shp", "geojson", "fgb"], "gpkg",
                feedback)
            aoi_layer = aoi_layer or None
        tiles = self.parameterAsFileOutput(parameters, self.TILE_OUTPUTS, context) or None
        output = None
        if not tiles or named_file(parameters.get(self.OUTPUT)):
            # Asked for only here: asking registers the layer to load when the run ends.
            output = self.parameterAsOutputLayer(parameters, self.OUTPUT, context) or None
        # Else the engine writes either the map over the union or the per-tile maps, and a
        # Class map left temporary (the dialog's default) is nothing the user asked for. A
        # named one goes on with output_dir, and the engine refuses the pair in one line.
        # More rasters: one scene with the input, in this order (GDAL's VRT draws later
        # sources over earlier ones where they overlap). The engine checks they fit.
        mosaic_with = [raster_path(layer) for layer in
                       self.parameterAsLayerList(parameters, self.MOSAIC_WITH, context) or []]
        resample = (self.parameterAsEnumString(parameters, self.RESAMPLE, context)
                    or RESAMPLE_CHOICES[0])
        grid = self.parameterAsEnumString(parameters, self.OUTPUT_GRID, context) or OUTPUT_GRIDS[0]
        request = {
            "src": [src, *mosaic_with] if mosaic_with else src,
            "mosaic": True if mosaic_with else None,
            "output": output,
            "output_dir": tiles,
            "model": self.parameterAsFile(parameters, self.MODEL, context),
            "bands": self.parameterAsInts(parameters, self.BANDS, context) or None,
            "device": device,
            "gpus": gpus,
            "precision": self.parameterAsEnumString(parameters, self.PRECISION, context) or None,
            "subimage_size": self.parameterAsInt(parameters, self.SUBIMAGE_SIZE, context) or None,
            "aoi": aoi,
            "aoi_layer": aoi_layer,
            "memory_limit": self.memory_limit(parameters, context),
            # Left out at their defaults, so that a request stays what an older engine reads.
            "resample": None if resample == RESAMPLE_CHOICES[0] else resample,
            "output_grid": None if grid == OUTPUT_GRIDS[0] else grid,
            "strict": True if self.parameterAsBoolean(parameters, self.STRICT, context) else None,
            **{key: self.parameterAsOutputLayer(parameters, name, context) or None
               for key, name in EXTRA_RASTERS},
            "overwrite": True,  # Processing asked for these outputs: replace what is there
        }
        return {key: value for key, value in request.items() if value is not None}

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        request = self.segment_request(parameters, context, feedback)
        dst, tiles = request.get("output"), request.get("output_dir")
        extra = {key: request.get(key) for key, _ in EXTRA_RASTERS}
        polygons = self.parameterAsOutputLayer(parameters, self.POLYGONS, context) or None
        min_area, simplify = self.polygon_options(parameters, context)
        if polygons and tiles:
            # Polygons are made here from the one class map, which the engine does not write
            # with per-tile maps (as it refuses --vector with --output-dir).
            raise QgsProcessingException(
                "Polygons need the Class map over all inputs, not Per-tile class maps")

        engine = self.find_engine(feedback)
        if request.get("model"):
            self.log_model_card(engine, request["model"], feedback)
        # Output folders that do not exist yet are made (as QGIS's own algorithms do), and
        # removed again, if still empty, when the run fails. The per-tile folder itself too:
        # the engine wants it to exist.
        made = make_folders([dst, polygons, *extra.values(),
                             os.path.join(tiles, "map.tif") if tiles else None])
        # The per-tile maps are named by the engine (after the inputs); those this run wrote
        # are the files in the folder that are new or changed.
        before = folder_state(tiles)
        # With polygons, segmenting is the first 80 % of the bar and polygonising the rest.
        share = 80.0 if polygons else 100.0
        written = []  # this run's outputs: a cancelled or failed run removes them all
        # The engine leaves nothing at its outputs; those of the steps before (the class map
        # when polygonising fails) are removed here: a failed run leaves nothing.
        with self.engine_errors(feedback, lambda: discard(written, made)):
            output = engine.segment(
                request, cancel=feedback.isCanceled,
                progress=self.stage_progress(feedback, engine_bridge.STAGES, 0.0, share),
                log=feedback.pushConsoleInfo)
            written += [path for path in (dst, *extra.values()) if path]
            if polygons:
                feedback.setProgressText(self.tr("geoddu: polygons"))
                polygons = engine.vectorize(
                    output, polygons, min_area=min_area, simplify=simplify,
                    memory_limit=request.get("memory_limit"),
                    progress=self.stage_progress(
                        feedback, engine_bridge.vector_stages(min_area, simplify), share,
                        100.0 - share),
                    cancel=feedback.isCanceled, log=feedback.pushConsoleInfo)
        feedback.setProgress(100)

        tile_maps = [path for path, state in folder_state(tiles).items()
                     if before.get(path) != state]
        classes = read_classes(dst or (tile_maps[0] if tile_maps else ""))
        if dst and context.willLoadLayerOnCompletion(dst):
            details = context.layerToLoadOnCompletionDetails(dst)
            details.setPostProcessor(ClassMapStyler.create(classes))
        for path in tile_maps:
            # Loaded (by the dialog, runAndLoadResults) and styled like the class map.
            name = os.path.splitext(os.path.basename(path))[0]
            context.addLayerToLoadOnCompletion(path, QgsProcessingContext.LayerDetails(
                name, context.project(), self.TILE_OUTPUTS))
            context.layerToLoadOnCompletionDetails(path).setPostProcessor(
                ClassMapStyler.create(classes, name))
        if polygons and context.willLoadLayerOnCompletion(polygons):
            details = context.layerToLoadOnCompletionDetails(polygons)
            details.setPostProcessor(ClassPolygonStyler.create(classes))
        results = {self.ENGINE: engine.kind}
        if dst:
            results[self.OUTPUT] = output
        if tiles:
            results[self.TILE_OUTPUTS] = tiles
        results.update({name: extra[key] for key, name in EXTRA_RASTERS if extra[key]})
        if polygons:
            results[self.POLYGONS] = polygons
        return results


def named_file(value) -> bool:
    """Whether an output parameter's raw value names a file (not skipped, not temporary)."""
    if isinstance(value, QgsProcessingOutputLayerDefinition):
        value = value.sink
    if isinstance(value, QgsProperty):
        if value.propertyType() != QgsProperty.StaticProperty:
            return True  # an expression (in a model): a name given, whatever it gives
        value = value.staticValue()
    return bool(value) and value != QgsProcessing.TEMPORARY_OUTPUT


def folder_state(folder: str | None) -> dict:
    """``{path: (size, mtime)}`` of the GeoTIFFs in ``folder`` (none without one)."""
    if not folder:
        return {}
    paths = [os.path.join(folder, name) for name in sorted(listdir(folder))
             if name.lower().endswith((".tif", ".tiff"))]
    return {path: file_state(path) for path in paths}


def make_folders(paths) -> list[str]:
    """Make the missing parent folders of ``paths``; return those made, deepest first."""
    made: list[str] = []
    for path in paths:
        folder = os.path.dirname(os.path.abspath(path)) if path else ""
        missing = []
        while folder and not os.path.isdir(folder) and folder != os.path.dirname(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        if not missing:
            continue
        try:
            os.makedirs(missing[0], exist_ok=True)
        except OSError as exc:
            remove_folders(made)
            raise QgsProcessingException(
                f"{missing[0]}: cannot make the output folder: {exc.strerror or exc}") from None
        made += [folder for folder in missing if folder not in made]
    return made


def remove_folders(folders) -> None:
    """Remove ``folders`` (deepest first) that are empty."""
    for folder in sorted(folders, key=len, reverse=True):
        try:
            os.rmdir(folder)
        except OSError:
            pass


def discard(written, made) -> None:
    """Remove a failed run's outputs and the folders it made for them."""
    for path in written:
        remove_raster(path)
    remove_folders(made)


def remove_raster(path: str) -> None:
    """Remove a GeoTIFF this run wrote, with its GDAL side-cars."""
    for candidate in (path, path + ".aux.xml", path + ".ovr"):
        try:
            os.remove(candidate)
        except OSError:
            pass
