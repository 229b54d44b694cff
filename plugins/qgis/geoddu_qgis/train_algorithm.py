"""The Processing algorithm ``geoddu:train``: train a DDU-Net on QGIS layers.

It runs the trainer of ``geoddu train --dataset folder``: the layers are staged as such a folder
(RUN_DIR/training-data: images/*.vrt pointing at the rasters, labels.gpkg written from the
polygon layer or labels/*.vrt from the label raster, classes.json), the engine trains into
RUN_DIR (best.pt, last.pt, history.json), and RUN_DIR/best.pt is copied atomically to the
output checkpoint. A cancelled run keeps RUN_DIR/last.pt: the run resumes from there.
"""

from __future__ import annotations

import json
import os
import shutil

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterField,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsRasterLayer,
)

from . import engine_bridge
from .algorithm import DEVICES, PRECISIONS, make_folders, remove_folders
from .algorithm_base import GeodduAlgorithm, raster_path
from .training_data import (
    CLASS_COLUMN,
    STAGED,
    copy_atomically,
    fmt,
    label_vrt,
    prepare_folder,
    raster_classes,
    remove_staged,
    safe_name,
    translate_vrt,
    vector_classes,
    write_labels,
)

#: Architectures offered, in the paper's notation (DDU-Net(D, F, C): depth, communicated
#: feature maps, communication yes/no), with their labels; the first is the default. An enum
#: by index: option values with commas would be read as lists.
ARCHITECTURES = [
    ("DDU-Net(3,32,Y)", "DDU-Net(3,32,Y): the paper's model"),
    ("DDU-Net(2,8,Y)", "DDU-Net(2,8,Y): small and quick"),
    ("DDU-Net(4,64,Y)", "DDU-Net(4,64,Y): large"),
    ("DDU-Net(3,32,N)", "DDU-Net(3,32,N): no communication between subimages"),
    ("U-Net(3)", "U-Net(3): a plain U-Net"),
]
#: Training precisions; "auto" leaves it to the engine (fp16 on CUDA, fp32 on the CPU).
AUTO = "auto"
TRAIN_PRECISIONS = [AUTO, *PRECISIONS]


class TrainAlgorithm(GeodduAlgorithm):
    # Parameters: the data and its labels, the model, the recipe, where it runs and lives.
    INPUTS, LABELS, CLASS_FIELD = "INPUTS", "LABELS", "CLASS_FIELD"
    LABEL_RASTER, CLASSES_FILE = "LABEL_RASTER", "CLASSES_FILE"
    ARCH, BASE_CHANNELS = "ARCH", "BASE_CHANNELS"
    EPOCHS, PATCH_SIZE, SUBIMAGES, BATCH_SIZE = "EPOCHS", "PATCH_SIZE", "SUBIMAGES", "BATCH_SIZE"
    LEARNING_RATE, SEED, PRECISION = "LEARNING_RATE", "SEED", "PRECISION"
    DEVICE, RESUME, RUN_FOLDER = "DEVICE", "RESUME", "RUN_FOLDER"
    # Outputs besides OUTPUT (the checkpoint) and ENGINE.
    EPOCHS_RUN, BEST_EPOCH, BEST_VAL_MIOU = "EPOCHS_RUN", "BEST_EPOCH", "BEST_VAL_MIOU"
    NAME, TITLE, HELP_ANCHOR = "train", "Train model (DDU-Net)", "train-model-ddu-net"
    DESCRIPTION = ("Trains a DDU-Net checkpoint on rasters and labelled polygons or a label "
                   "raster.")
    HELP = (
        "Trains a DDU-Net (domain-decomposition U-Net) on your rasters and labels, with the "
        "trainer of geoddu train --dataset folder, and writes a checkpoint that Segment "
        "raster (DDU-Net) uses.\n"
        "\n"
        "Input rasters (INPUTS): one or more images with the same bands (any raster GDAL "
        "reads).\n"
        "Label polygons (LABELS, optional): a polygon layer whose features carry a class; "
        "pixels no polygon covers are ignored. Give it, or a label raster.\n"
        "Class field (CLASS_FIELD): the attribute of the label polygons holding the class. "
        "Each distinct value is a class, named after the value, or after the layer's "
        "categories when it is styled by this field (their colours too).\n"
        "Label raster (LABEL_RASTER, optional): integer class values instead of polygons, "
        "resampled (nearest) to each input raster's grid; its nodata is ignored. Each "
        "distinct value is a class, named after its paletted style's or its own category "
        "names.\n"
        "Classes file (CLASSES_FILE, optional): a YAML or JSON file with the classes (name, "
        "color, value) instead of the distinct values, as geoddu train takes it.\n"
        "Architecture (ARCH): DDU-Net(D,F,C): depth D, F feature maps communicated between "
        "subimages, C communication yes (Y) or no (N). 0: DDU-Net(3,32,Y), the paper's "
        "model; 1: DDU-Net(2,8,Y), small and quick; 2: DDU-Net(4,64,Y), large; 3: "
        "DDU-Net(3,32,N), no communication; 4: U-Net(3), a plain U-Net.\n"
        "Base channels (BASE_CHANNELS, advanced): channels of the first block, doubled at "
        "each level (0: geoddu's default, 16).\n"
        "Epochs (EPOCHS): the most epochs to train; after 30, training stops early when the "
        "validation loss has not improved for 15 epochs.\n"
        "Patch size (PATCH_SIZE): the images are cut into square patches of this many "
        "pixels; 10 % of them validate, 10 % are kept out for geoddu evaluate.\n"
        "Subimages per patch side (SUBIMAGES): each patch is cut into P x P subimages that "
        "exchange features, as in segmentation.\n"
        "Batch size (BATCH_SIZE, advanced): patches per training step.\n"
        "Learning rate (LEARNING_RATE, advanced): Adam's initial rate, halved when the "
        "validation loss stalls.\n"
        "Seed (SEED, advanced): seeds initialisation, data order and the splits.\n"
        "Device (DEVICE): cpu, or cuda for an NVIDIA GPU.\n"
        "Precision (PRECISION, advanced): auto (fp16 mixed precision on CUDA, fp32 on the "
        "CPU), fp32, bf16 (bfloat16 mixed precision with float32 weights: on a CPU with "
        "AVX-512 BF16 or AMX about half the time of fp32) or fp16 (CUDA only). Validation "
        "runs in it too.\n"
        "Resume (RESUME, advanced): continue the run in the run folder from its last.pt "
        "(after a cancel, say) with the data and settings it was started with; only Epochs "
        "and Device apply.\n"
        "Run folder (RUN_FOLDER, optional): where the run lives: best.pt, last.pt, "
        "history.csv/json and the staged training data (skipped: a folder named like the "
        "checkpoint, with _run).\n"
        "Trained checkpoint (OUTPUT): a copy of the run's best.pt (lowest validation "
        "loss), written only when the run completes.\n"
        "\n"
        "Outputs: the checkpoint, the run folder, EPOCHS_RUN, BEST_EPOCH, BEST_VAL_MIOU "
        "and ENGINE, the engine set-up that ran (import, env or cli). Every epoch's loss and "
        "validation mIoU go to the log. Cancelling stops between batches: the checkpoint "
        "is not written, and the run folder's last.pt (if an epoch finished) resumes the "
        "run, here with Resume or with geoddu train -o RUN_FOLDER --resume."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterMultipleLayers(
            self.INPUTS, self.tr("Input rasters"), QgsProcessing.TypeRaster))
        self.addParameter(QgsProcessingParameterFeatureSource(
            self.LABELS, self.tr("Label polygons"), [QgsProcessing.TypeVectorPolygon],
            optional=True))
        self.addParameter(QgsProcessingParameterField(
            self.CLASS_FIELD, self.tr("Class field"), parentLayerParameterName=self.LABELS,
            optional=True))
        self.addParameter(QgsProcessingParameterRasterLayer(
            self.LABEL_RASTER, self.tr("Label raster (instead of polygons)"), optional=True))
        self.addParameter(QgsProcessingParameterFile(
            self.CLASSES_FILE, self.tr("Classes file (YAML/JSON; none: the distinct values)"),
            behavior=QgsProcessingParameterFile.File, optional=True,
            fileFilter="Classes (*.yaml *.yml *.json);;All files (*.*)"))
        self.addParameter(QgsProcessingParameterEnum(
            self.ARCH, self.tr("Architecture"), options=[label for _, label in ARCHITECTURES],
            defaultValue=0))
        self.addParameter(QgsProcessingParameterNumber(
            self.EPOCHS, self.tr("Epochs (at most)"), QgsProcessingParameterNumber.Integer,
            defaultValue=100, minValue=1))
        self.addParameter(QgsProcessingParameterNumber(
            self.PATCH_SIZE, self.tr("Patch size in pixels"),
            QgsProcessingParameterNumber.Integer, defaultValue=512, minValue=16))
        self.addParameter(QgsProcessingParameterNumber(
            self.SUBIMAGES, self.tr("Subimages per patch side"),
            QgsProcessingParameterNumber.Integer, defaultValue=4, minValue=1))
        device = QgsProcessingParameterEnum(self.DEVICE, self.tr("Device"), options=DEVICES,
                                            defaultValue=DEVICES[0])
        device.setUsesStaticStrings(True)
        self.addParameter(device)
        advanced = [
            QgsProcessingParameterNumber(
                self.BASE_CHANNELS, self.tr("Base channels (0: geoddu's default)"),
                QgsProcessingParameterNumber.Integer, defaultValue=0, optional=True,
                minValue=0),
            QgsProcessingParameterNumber(
                self.BATCH_SIZE, self.tr("Batch size (patches)"),
                QgsProcessingParameterNumber.Integer, defaultValue=12, minValue=1),
            QgsProcessingParameterNumber(
                self.LEARNING_RATE, self.tr("Learning rate"), QgsProcessingParameterNumber.Double,
                defaultValue=0.001, minValue=0.0),
            QgsProcessingParameterNumber(
                self.SEED, self.tr("Seed"), QgsProcessingParameterNumber.Integer, defaultValue=0),
            self._precision(),
            QgsProcessingParameterBoolean(
                self.RESUME, self.tr("Resume the run in the run folder (its last.pt)"),
                defaultValue=False),
        ]
        self.add_advanced(*advanced)
        self.addParameter(QgsProcessingParameterFolderDestination(
            self.RUN_FOLDER, self.tr("Run folder (skip: beside the checkpoint)"), optional=True,
            createByDefault=False))
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Trained checkpoint"),
            fileFilter="geoddu checkpoints (*.pt)"))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))
        self.addOutput(QgsProcessingOutputNumber(self.EPOCHS_RUN, self.tr("Epochs run")))
        self.addOutput(QgsProcessingOutputNumber(self.BEST_EPOCH, self.tr("Best epoch")))
        self.addOutput(QgsProcessingOutputNumber(
            self.BEST_VAL_MIOU, self.tr("Validation mIoU of the best epoch")))

    def _precision(self) -> QgsProcessingParameterEnum:
        precision = QgsProcessingParameterEnum(
            self.PRECISION, self.tr("Precision (auto: fp16 on CUDA, fp32 on the CPU)"),
            options=TRAIN_PRECISIONS, defaultValue=AUTO)
        precision.setUsesStaticStrings(True)  # so that qgis_process takes --PRECISION=bf16
        return precision

    def checkParameterValues(self, parameters, context):  # noqa: N802
        ok, message = super().checkParameterValues(parameters, context)
        if not ok or self._bool(parameters, self.RESUME, context):
            return ok, message
        has_polygons = parameters.get(self.LABELS) not in (None, "")
        has_raster = parameters.get(self.LABEL_RASTER) not in (None, "")
        if has_polygons == has_raster:
            return False, self.tr("Give the labels as polygons (with their class field) or as "
                                  "a label raster, one of the two")
        if has_polygons and not parameters.get(self.CLASS_FIELD):
            return False, self.tr("Choose the class field of the label polygons")
        return True, ""

    def _bool(self, parameters, name, context) -> bool:
        return bool(parameters.get(name)) and self.parameterAsBoolean(parameters, name, context)

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        output = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        run_dir = self.parameterAsFileOutput(parameters, self.RUN_FOLDER, context) or ""
        if not run_dir:
            run_dir = os.path.splitext(output)[0] + "_run"
        run_dir = os.path.abspath(run_dir)
        resume = self._bool(parameters, self.RESUME, context)
        device = self.parameterAsEnumString(parameters, self.DEVICE, context) or DEVICES[0]
        epochs = self.parameterAsInt(parameters, self.EPOCHS, context)

        engine = self.find_engine(feedback)
        feedback.pushInfo(self.tr("Run folder: {}").format(run_dir))

        had_run_dir = os.path.isdir(run_dir)
        made = make_folders([output, os.path.join(run_dir, engine_bridge.LAST)])
        data_dir = os.path.join(run_dir, STAGED)
        staged = not resume  # a new run stages its data: a failed one removes it again

        def discard() -> None:
            self.discard(run_dir, staged, had_run_dir, made)

        with self.engine_errors(feedback, discard, lambda: self.cancelled_message(
                run_dir, staged, had_run_dir, made)):
            # The run, described once: TrainRequest's fields (geoddu.train.request), checked by
            # the engine in-process or, through the command, as JSON on `--request -`.
            if resume:
                request = {"run_dir": run_dir, "resume": True, "epochs": epochs,
                           "device": device}
                if os.path.isdir(data_dir):
                    request["data"] = data_dir
            else:
                feedback.setProgressText(self.tr("geoddu: staging the training data"))
                labels = self.stage(parameters, context, feedback, data_dir)
                request = self.train_request(parameters, context, data_dir, run_dir, device,
                                             epochs, labels)
            if feedback.isCanceled():
                raise engine_bridge.EngineCancelled("cancelled")
            summary = self.run_training(engine, request, feedback)
            best = summary["best"]
            if not os.path.isfile(best):
                raise engine_bridge.EngineError(
                    f"{best}: geoddu reported success but did not write it")
            copy_atomically(best, output)
        feedback.setProgress(100)
        feedback.pushInfo(self.tr("Checkpoint: {} (best epoch {} of {})").format(
            output, summary["best_epoch"], summary["epochs_run"]))
        self.log_model_card(engine, output, feedback)
        results = {self.OUTPUT: output, self.RUN_FOLDER: run_dir, self.ENGINE: engine.kind,
                   self.EPOCHS_RUN: summary["epochs_run"], self.BEST_EPOCH: summary["best_epoch"],
                   self.BEST_VAL_MIOU: summary["best_val_miou"]}
        return {key: value for key, value in results.items() if value is not None}

    def train_request(self, parameters, context, data_dir, run_dir, device, epochs,
                      labels) -> dict:
        """A new run on the staged folder dataset, as TrainRequest fields (None: the engine's
        default, left out)."""
        arch = ARCHITECTURES[self.parameterAsEnum(parameters, self.ARCH, context)][0]
        request = {
            "dataset": "folder", "data": data_dir, "run_dir": run_dir, "arch": arch,
            "base_channels": self.parameterAsInt(parameters, self.BASE_CHANNELS, context) or None,
            "epochs": epochs,
            "batch_size": self.parameterAsInt(parameters, self.BATCH_SIZE, context),
            "subimages": self.parameterAsInt(parameters, self.SUBIMAGES, context),
            "lr": self.parameterAsDouble(parameters, self.LEARNING_RATE, context),
            "seed": self.parameterAsInt(parameters, self.SEED, context),
            "device": device,
            "precision": self._precision_value(parameters, context),
            "patch_size": self.parameterAsInt(parameters, self.PATCH_SIZE, context),
            "class_column": labels.get("class_column"),
            "overwrite": True,  # Processing replaces its outputs: so does the run
        }
        return {key: value for key, value in request.items() if value is not None}

    def _precision_value(self, parameters, context) -> str | None:
        value = self.parameterAsEnumString(parameters, self.PRECISION, context) or AUTO
        return None if value == AUTO else value

    def run_training(self, engine, request, feedback) -> dict:
        feedback.setProgressText(self.tr("geoddu: training"))

        def progress(stage: str, done: int, total: int) -> None:
            if total > 0:
                feedback.setProgress(min(max(100.0 * done / total, 0.0), 100.0))

        def epoch(row: dict) -> None:
            feedback.pushInfo(self.tr("epoch {}/{}: train loss {}, val loss {}, val mIoU {}{}")
                              .format(row["epoch"], row["epochs"], fmt(row["train_loss"], 4),
                                      fmt(row["val_loss"], 4), fmt(row["val_miou"], 3),
                                      self.tr(" (best so far)") if row.get("best") else ""))

        def start(info: dict) -> None:
            feedback.pushInfo(self.tr("training on {} in {}").format(info["device"],
                                                                     info["precision"]))

        return engine.train(request, progress=progress, epoch=epoch, cancel=feedback.isCanceled,
                            log=feedback.pushConsoleInfo, start=start)

    # -- the folder dataset ------------------------------------------------------------------
    def stage(self, parameters, context, feedback, data_dir) -> dict:
        """Write the folder dataset ``data_dir`` from the layers; return what the trainer
        needs to know about it (``class_column`` for polygon labels)."""
        rasters = self.parameterAsLayerList(parameters, self.INPUTS, context)
        if not rasters:
            raise QgsProcessingException(self.tr("Give at least one input raster"))
        prepare_folder(data_dir)
        images = []
        for number, layer in enumerate(rasters, 1):
            if not isinstance(layer, QgsRasterLayer):
                raise QgsProcessingException(
                    f"{layer.name()}: not a raster layer; the inputs are the images")
            name = f"{number:03d}_{safe_name(layer.name())}"
            dst = os.path.join(data_dir, "images", name + ".vrt")
            translate_vrt(raster_path(layer), dst)
            images.append((name, dst))

        classes_file = self.parameterAsFile(parameters, self.CLASSES_FILE, context) or None
        label_layer = self.parameterAsRasterLayer(parameters, self.LABEL_RASTER, context)
        info: dict = {}
        if label_layer is not None:
            label_path = raster_path(label_layer)
            os.makedirs(os.path.join(data_dir, "labels"))
            for name, image in images:
                label_vrt(label_path, image, os.path.join(data_dir, "labels", name + ".vrt"))
            classes = None if classes_file else raster_classes(label_layer, label_path, feedback)
        else:
            source = self.parameterAsSource(parameters, self.LABELS, context)
            if source is None:
                raise QgsProcessingException(self.invalidSourceError(parameters, self.LABELS))
            field = (self.parameterAsFields(parameters, self.CLASS_FIELD, context) or [""])[0]
            if source.fields().indexOf(field) < 0:
                raise QgsProcessingException(
                    self.tr("The label polygons have no field {!r}").format(field))
            values = write_labels(source, field, os.path.join(data_dir, "labels.gpkg"),
                                  context, feedback)
            layer = self.parameterAsVectorLayer(parameters, self.LABELS, context)
            classes = None if classes_file else vector_classes(values, layer, field)
            info["class_column"] = CLASS_COLUMN
        if classes_file:
            suffix = os.path.splitext(classes_file)[1].lower()
            suffix = suffix if suffix in (".yaml", ".yml", ".json") else ".yaml"
            shutil.copyfile(classes_file, os.path.join(data_dir, "classes" + suffix))
        else:
            feedback.pushInfo(self.tr("Classes: {}").format(
                ", ".join(f"{c['name']} ({c['value']})" for c in classes)))
            with open(os.path.join(data_dir, "classes.json"), "w", encoding="utf-8") as out:
                json.dump({"classes": classes}, out, indent=1)
        return info

    # -- failures ------------------------------------------------------------------------------
    def cancelled_message(self, run_dir, staged, had_run_dir, made) -> str:
        last = os.path.join(run_dir, engine_bridge.LAST)
        if os.path.isfile(last):
            done = engine_bridge.train_summary(run_dir)["epochs_run"]
            return self.tr(
                "cancelled after epoch {}; no checkpoint was written. {} resumes the run: run "
                "again with Resume, or geoddu train -o {} --resume").format(done, last, run_dir)
        self.discard(run_dir, staged, had_run_dir, made)
        return self.tr("cancelled before the first epoch ended; nothing was written")

    @staticmethod
    def discard(run_dir, staged, had_run_dir, made) -> None:
        """After a failure: a run with nothing to resume leaves nothing (its staged data, the
        run folder if this run made it and it is empty, the output folders it made)."""
        if os.path.isfile(os.path.join(run_dir, engine_bridge.LAST)):
            return  # a resumable run stays as it is
        if staged:
            remove_staged(os.path.join(run_dir, STAGED))
        folders = list(made)
        if not had_run_dir:
            folders.append(run_dir)
        remove_folders(folders)
