"""The Processing algorithms ``geoddu:sample`` (Create accuracy sample) and ``geoddu:assess``
(Assess accuracy): fronts over the engine's ``geoddu sample`` and ``geoddu assess``
(``geoddu.accuracy``), through whichever set-up runs it. No estimator lives here: the plugin
passes the parameters on and logs what the engine returns."""

from __future__ import annotations

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterField,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
)

from .algorithm import make_folders
from .algorithm import remove_folders as remove_made_folders
from .algorithm_base import GeodduAlgorithm

#: What the in-process sample reports, in order (through the command it is one step).
SAMPLE_STAGES = ("count", "pick", "write_points")
ASSESS_STAGES = ("counting map pixels", "reading the reference")
DESIGNS = ["stratified", "simple"]
#: Vector formats the engine reads a reference from as it is (others are exported first).
REFERENCE_FORMATS = ["gpkg", "shp", "geojson", "fgb"]

LOOP = (
    "The loop: Segment raster (DDU-Net) makes a class map; Create accuracy sample draws "
    "points from it; you label them in QGIS (toggle editing on the point layer and type the "
    "class you see into each point's reference field, ideally without looking at map_class, "
    "then save the edits); Assess accuracy turns the labels into accuracies and "
    "error-adjusted areas; labelled polygons (or the labelled points buffered into small "
    "polygons with Buffer) then go into Train model (DDU-Net) as more label polygons, and "
    "the retrained model is segmented again. Points used for training no longer test the "
    "model without bias: assess a retrained model with a new sample."
)


def optional_number(algorithm, parameters, name, context, integer: bool = True):
    """An optional number parameter's value, None when it is not set (0 is a value)."""
    if parameters.get(name) in (None, ""):
        return None
    if integer:
        return algorithm.parameterAsInt(parameters, name, context)
    return algorithm.parameterAsDouble(parameters, name, context)


class SampleAlgorithm(GeodduAlgorithm):
    POINTS, EXPECTED_UA, TARGET_SE = "POINTS", "EXPECTED_UA", "TARGET_SE"
    MIN_PER_CLASS, SEED = "MIN_PER_CLASS", "SEED"
    # Outputs besides OUTPUT and ENGINE.
    POINT_COUNT, SEED_USED = "POINT_COUNT", "SEED_USED"
    NAME, TITLE, HELP_ANCHOR = "sample", "Create accuracy sample", "create-accuracy-sample"
    DESCRIPTION = ("Draws a stratified random sample of points from a class map, to label "
                   "for an accuracy assessment.")
    HELP = (
        "Draws a stratified random sample (the strata are the map classes) of pixels from a "
        "class map and writes them as points at the pixel centres, in the map's CRS, for an "
        "accuracy assessment as Olofsson et al. (2014) recommend: what geoddu sample does. "
        "Nodata is never sampled and no pixel is drawn twice; the map is read window by "
        "window, so memory grows with the sample, not the map.\n"
        "\n"
        "Class map (INPUT): a one-band integer class map, e.g. the output of Segment raster "
        "(DDU-Net); 255 and nodata are no class.\n"
        "Number of points (POINTS, optional): the sample size, allocated to the classes in "
        "proportion to their mapped area. Give it, or the expected user's accuracies.\n"
        "Expected user's accuracies (EXPECTED_UA, optional): instead of a number of points, "
        "Olofsson's sample size from the user's accuracy you expect per class: one value for "
        "every class (0.8), or a default and exceptions by class name or id "
        "(0.85,water=0.95,3=0.7). n = (sum W_i sqrt(U_i (1 - U_i)) / SE) squared.\n"
        "Target standard error (TARGET_SE): with expected user's accuracies, the standard "
        "error of the overall accuracy to reach (0.01 by default); ignored with a number of "
        "points.\n"
        "Minimum points per class (MIN_PER_CLASS): at least this many points in each class "
        "(all its pixels if it has fewer); the other classes give up points in proportion. "
        "Olofsson et al. suggest 50 to 100.\n"
        "Random seed (SEED, optional): the same seed draws the same points from the same map "
        "on any machine. Not set: one is drawn, logged and returned as SEED_USED, so the "
        "sample can be drawn again.\n"
        "Sample points (OUTPUT): GeoPackage, GeoJSON, FlatGeobuf or Shapefile, with the "
        "fields point_id, map_class, map_class_name, stratum_pixels, stratum_weight (the "
        "class's share of the mapped pixels), row, col and an empty reference field "
        "(Shapefile: class_name, stratum_px, stratum_w).\n"
        "\n"
        "Outputs: the points, POINT_COUNT, SEED_USED and ENGINE, the engine set-up that ran. "
        "The log lists every stratum: pixels, weight and points. Cancelling, or a failure, "
        "leaves no output file.\n"
        "\n" + LOOP
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class map")))
        self.addParameter(QgsProcessingParameterNumber(
            self.POINTS, self.tr("Number of points (or expected user's accuracies)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=1))
        self.addParameter(QgsProcessingParameterString(
            self.EXPECTED_UA,
            self.tr("Expected user's accuracies, e.g. 0.85,water=0.95 (Olofsson's sample size)"),
            optional=True))
        self.addParameter(QgsProcessingParameterNumber(
            self.TARGET_SE, self.tr("Target standard error of the overall accuracy"),
            QgsProcessingParameterNumber.Double, defaultValue=0.01, minValue=1e-6,
            maxValue=0.999999))
        self.addParameter(QgsProcessingParameterNumber(
            self.MIN_PER_CLASS, self.tr("Minimum points per class"),
            QgsProcessingParameterNumber.Integer, defaultValue=0, minValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.SEED, self.tr("Random seed (not set: drawn and logged)"),
            QgsProcessingParameterNumber.Integer, optional=True, minValue=0))
        output = QgsProcessingParameterVectorDestination(
            self.OUTPUT, self.tr("Sample points"), QgsProcessing.TypeVectorPoint)
        output.setSupportsNonFileBasedOutput(False)  # the engine writes a file
        self.addParameter(output)
        self.addOutput(QgsProcessingOutputNumber(self.POINT_COUNT, self.tr("Points drawn")))
        self.addOutput(QgsProcessingOutputNumber(self.SEED_USED, self.tr("Seed used")))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        has_points = parameters.get(self.POINTS) not in (None, "")
        has_ua = bool(str(parameters.get(self.EXPECTED_UA) or "").strip())
        if has_points == has_ua:
            return False, self.tr("Give the number of points or the expected user's "
                                  "accuracies (Olofsson's sample size), one of the two")
        return True, ""

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = self.input_raster(parameters, context)
        dst = self.parameterAsOutputLayer(parameters, self.OUTPUT, context)
        expected_ua = self.parameterAsString(parameters, self.EXPECTED_UA, context).strip()
        options = {
            "n": optional_number(self, parameters, self.POINTS, context),
            "expected_ua": expected_ua or None,
            "target_se": (self.parameterAsDouble(parameters, self.TARGET_SE, context)
                          if expected_ua else None),
            "min_per_class": self.parameterAsInt(parameters, self.MIN_PER_CLASS, context),
            "seed": optional_number(self, parameters, self.SEED, context),
        }

        engine = self.find_engine(feedback)
        made = make_folders([dst])
        feedback.setProgressText(self.tr("geoddu: sample"))
        with self.engine_errors(feedback, lambda: remove_made_folders(made)):
            summary = engine.sample(
                src, dst, cancel=feedback.isCanceled, log=feedback.pushConsoleInfo,
                progress=self.stage_progress(feedback, SAMPLE_STAGES), **options)
        feedback.setProgress(100)
        for line in sample_lines(summary):
            feedback.pushInfo(line)
        return {self.OUTPUT: dst, self.POINT_COUNT: summary.get("points"),
                self.SEED_USED: summary.get("seed"), self.ENGINE: engine.kind}


def sample_lines(summary: dict) -> list[str]:
    """The log of a sample: how it was sized, then one line per stratum."""
    if summary.get("design") == "olofsson":
        how = "Olofsson's sample size for SE(OA) {:g}: n = {}".format(
            summary.get("target_se"), summary.get("n_requested"))
    else:
        how = "n = {}".format(summary.get("n_requested"))
    lines = ["Sample: {} points in {} strata ({}), seed {}".format(
        summary.get("points"), len(summary.get("strata") or []), how, summary.get("seed"))]
    for s in summary.get("strata") or []:
        expected = ("" if s.get("expected_ua") is None
                    else ", expected user's accuracy {:g}".format(s["expected_ua"]))
        lines.append("  class {} {}: {:,} pixels, weight {:.4f}, {} points{}".format(
            s.get("class_id"), s.get("name"), s.get("pixels", 0), s.get("weight", 0.0),
            s.get("points"), expected))
    return lines


class AssessAlgorithm(GeodduAlgorithm):
    REFERENCE, CLASS_FIELD, REFERENCE_RASTER = "REFERENCE", "CLASS_FIELD", "REFERENCE_RASTER"
    DESIGN, JSON, CSV = "DESIGN", "JSON", "CSV"
    # Outputs besides OUTPUT (the HTML report) and ENGINE.
    OVERALL_ACCURACY, OVERALL_ACCURACY_CI = "OVERALL_ACCURACY", "OVERALL_ACCURACY_CI"
    NAME, TITLE, HELP_ANCHOR = "assess", "Assess accuracy", "assess-accuracy"
    DESCRIPTION = ("Accuracy and error-adjusted class areas of a class map from labelled "
                   "reference points, polygons or a raster.")
    HELP = (
        "Assesses a class map against reference data as Olofsson et al. (2014) recommend, "
        "as geoddu assess does: the sample error matrix, the error matrix in proportions of "
        "area, overall, user's and producer's accuracy with 95% confidence intervals, F1 and "
        "IoU per class, quantity and allocation disagreement, and the error-adjusted area of "
        "each class (hectares, with its 95% interval) beside its mapped area. The map needs a "
        "projected CRS.\n"
        "\n"
        "Class map (INPUT): the one-band integer class map that was sampled.\n"
        "Reference points or polygons (REFERENCE, optional): labelled points (one sample "
        "unit each: e.g. the output of Create accuracy sample once labelled) or polygons "
        "(their pixels are counted; the intervals are then too narrow). Any CRS. Save the "
        "layer's edits first: the engine reads the file. Give it, or a reference raster.\n"
        "Class field (CLASS_FIELD): the reference layer's field holding each unit's class, "
        "a class name of the map (any case) or a class id; reference by default, the field "
        "Create accuracy sample makes.\n"
        "Reference raster (REFERENCE_RASTER, optional): instead of a vector layer, a raster "
        "on exactly the map's grid, its values the map's class ids (or named classes).\n"
        "Sampling design (DESIGN): stratified (a stratified random sample with the map "
        "classes as strata, as Create accuracy sample draws) or simple (a simple random or "
        "systematic sample).\n"
        "Accuracy report (OUTPUT): a self-contained HTML page with every figure and both "
        "matrices shaded by their share of the row; shown in the Results Viewer.\n"
        "Figures as JSON (JSON, optional) and as CSV (CSV, optional): everything, as "
        "geoddu assess --json and --csv write it.\n"
        "\n"
        "Outputs: the report, JSON and CSV asked for, OVERALL_ACCURACY, OVERALL_ACCURACY_CI "
        "(the half-width of its 95% interval) and ENGINE, the engine set-up that ran. The "
        "log gives the overall accuracy with its interval, each class's accuracies and areas, "
        "and what was left out (units outside the map, on nodata, or with an empty or "
        "unknown class) and why. A failure leaves no output file.\n"
        "\n" + LOOP
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, self.tr("Class map")))
        self.addParameter(QgsProcessingParameterVectorLayer(
            self.REFERENCE, self.tr("Reference points or polygons"),
            [QgsProcessing.TypeVectorPoint, QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field of the reference"),
            defaultValue="reference", parentLayerParameterName=self.REFERENCE, optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.REFERENCE_RASTER, self.tr("Reference raster (instead of points or polygons)"),
            optional=True))
        design = QgsProcessingParameterEnum(
            self.DESIGN, self.tr("Sampling design"), options=DESIGNS, defaultValue=DESIGNS[0])
        design.setUsesStaticStrings(True)  # so that qgis_process takes --DESIGN=simple
        self.addParameter(design)
        # An HTML filter makes QGIS register the output as HTML: the Results Viewer lists it.
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Accuracy report"), fileFilter="HTML files (*.html *.htm)"))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.JSON, self.tr("Figures as JSON"), fileFilter="JSON files (*.json)",
            optional=True, createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.CSV, self.tr("Figures as CSV"), fileFilter="CSV files (*.csv)",
            optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputNumber(
            self.OVERALL_ACCURACY, self.tr("Overall accuracy")))
        self.addOutput(QgsProcessingOutputNumber(
            self.OVERALL_ACCURACY_CI, self.tr("Overall accuracy: half-width of its 95% interval")))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok:
            return ok, message
        has_vector = parameters.get(self.REFERENCE) not in (None, "")
        has_raster = parameters.get(self.REFERENCE_RASTER) not in (None, "")
        if has_vector == has_raster:
            return False, self.tr("Give the reference as points or polygons (with their class "
                                  "field) or as a raster, one of the two")
        if has_vector and not self.parameterAsFields(parameters, self.CLASS_FIELD, context):
            return False, self.tr("Choose the class field of the reference layer")
        return True, ""

    def reference(self, parameters, context, feedback) -> tuple[str, str | None, str | None]:
        """(path, layer name, class column) of the reference, as the engine reads it."""
        raster = self.parameterAsRasterLayer(parameters, self.REFERENCE_RASTER, context)
        if raster is not None:
            return self.input_raster(parameters, context, self.REFERENCE_RASTER), None, None
        layer = self.parameterAsVectorLayer(parameters, self.REFERENCE, context)
        if layer is None:
            raise QgsProcessingException(self.invalidSourceError(parameters, self.REFERENCE))
        if layer.isEditable() and layer.isModified():
            # The engine reads the file: labels typed but not saved would be silently missing.
            raise QgsProcessingException(self.tr(
                "{}: has unsaved edits; save them (Save Layer Edits) first, the engine reads "
                "the file").format(layer.name()))
        field = (self.parameterAsFields(parameters, self.CLASS_FIELD, context) or [""])[0]
        if layer.fields().indexOf(field) < 0:
            raise QgsProcessingException(
                self.tr("{}: has no field {!r}").format(layer.name(), field))
        # A file OGR reads (QGIS exports memory or unsupported layers to a temporary one).
        path, name = self.parameterAsCompatibleSourceLayerPathAndLayerName(
            parameters, self.REFERENCE, context, REFERENCE_FORMATS, "gpkg", feedback)
        return path, name or None, field

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        src = self.input_raster(parameters, context)
        reference, layer, class_column = self.reference(parameters, context, feedback)
        design = self.parameterAsEnumString(parameters, self.DESIGN, context) or DESIGNS[0]
        report = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        extra = {key: self.parameterAsFileOutput(parameters, name, context) or None
                 for key, name in (("json_path", self.JSON), ("csv_path", self.CSV))}

        engine = self.find_engine(feedback)
        made = make_folders([report, *extra.values()])
        feedback.setProgressText(self.tr("geoddu: assess"))
        with self.engine_errors(feedback, lambda: remove_made_folders(made)):
            result = engine.assess(
                src, reference, class_column=class_column, layer=layer, design=design,
                report=report, cancel=feedback.isCanceled, log=feedback.pushConsoleInfo,
                progress=self.stage_progress(feedback, ASSESS_STAGES), **extra)
        feedback.setProgress(100)
        for line in assessment_lines(result):
            feedback.pushInfo(line)
        overall = result.get("overall_accuracy") or {}
        results = {self.OUTPUT: report, self.ENGINE: engine.kind,
                   self.OVERALL_ACCURACY: overall.get("estimate"),
                   self.OVERALL_ACCURACY_CI: overall.get("ci"),
                   self.JSON: extra["json_path"], self.CSV: extra["csv_path"]}
        return {key: value for key, value in results.items() if value is not None}


def _pm(figure: dict, i: int | None = None, digits: int = 3) -> str:
    """``estimate ± ci`` of a figure of the engine's JSON (``i``: the class), - when none."""
    value, ci = figure.get("estimate"), figure.get("ci")
    if i is not None:
        value, ci = (value or [])[i], (ci or [])[i]
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if ci is None else f"{value:.{digits}f} ± {ci:.{digits}f}"


def assessment_lines(result: dict) -> list[str]:
    """The log of an assessment: the overall accuracy with its interval, then per class."""
    overall = result.get("overall_accuracy") or {}
    lines = []
    value, ci = overall.get("estimate"), overall.get("ci")
    if value is not None:
        interval = "" if ci is None else f" (95% interval {value - ci:.4f} to {value + ci:.4f})"
        lines.append("Overall accuracy {}{} from {} {} ({} design)".format(
            _pm(overall, digits=4), interval, result.get("used"), result.get("sample_unit"),
            result.get("design")))
    users = result.get("users_accuracy") or {}
    producers = result.get("producers_accuracy") or {}
    area = result.get("area") or {}
    mapped = result.get("mapped_area") or []
    for i, name in enumerate(result.get("classes") or []):
        lines.append(f"  {name}: user's accuracy {_pm(users, i)}, producer's accuracy "
                     f"{_pm(producers, i)}, area {_pm(area, i, 1)} ha (mapped {_ha(mapped, i)})")
    lines.append("Quantity disagreement {}, allocation disagreement {}".format(
        _num(result.get("quantity_disagreement")), _num(result.get("allocation_disagreement"))))
    lines += ["Note: " + note for note in result.get("notes") or []]
    return lines


def _ha(values: list, i: int) -> str:
    value = values[i] if i < len(values) else None
    return "-" if value is None else f"{value:,.1f} ha"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
