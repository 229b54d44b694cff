"""The Processing algorithm ``geoddu:modelcard``: a checkpoint's model card as an HTML page
and in the log, formatted by the engine (``geoddu card --text --html``,
``geoddu.card.card_text``/``card_html``), never here."""

from __future__ import annotations

from qgis.core import (
    QgsProcessingOutputString,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
)

from .algorithm import make_folders
from .algorithm import remove_folders as remove_made_folders
from .algorithm_base import GeodduAlgorithm


class ModelCardAlgorithm(GeodduAlgorithm):
    MODEL, TEXT = "MODEL", "TEXT"
    NAME, TITLE, HELP_ANCHOR = "modelcard", "Model card", "model-card"
    DESCRIPTION = "Shows what a geoddu checkpoint was trained on, how well it did, and for what."
    HELP = (
        "Shows the model card of a geoddu checkpoint, as geoddu card and geoddu info -m print "
        "it: the user's fields (description, license, citation, authors, intended use, "
        "limitations) and what geoddu train recorded (the training data, bands, pixel size, "
        "classes, normalisation, validation metrics, training time, hardware, versions, "
        "date) and accuracy figures added later. Segment raster (DDU-Net) and Train model "
        "(DDU-Net) write the card of their checkpoint to their log too.\n"
        "\n"
        "Checkpoint (MODEL): a .pt file written by geoddu (Train model, geoddu train or geoddu "
        "init). A checkpoint without a card is fine: the page says so.\n"
        "Model card (OUTPUT): a self-contained HTML page of the card; shown in the Results "
        "Viewer.\n"
        "\n"
        "Outputs: the page, TEXT (the card as plain lines, also in the log) and ENGINE, the "
        "engine set-up that ran. Edit the user fields with geoddu card -m MODEL --set "
        "license=CC-BY-4.0 (docs/model-cards.md)."
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile(
            self.MODEL, self.tr("Checkpoint"), behavior=QgsProcessingParameterFile.File,
            fileFilter="geoddu checkpoints (*.pt *.pth *.ckpt);;All files (*.*)"))
        # An HTML filter makes QGIS register the output as HTML: the Results Viewer lists it.
        self.addParameter(QgsProcessingParameterFileDestination(
            self.OUTPUT, self.tr("Model card"), fileFilter="HTML files (*.html *.htm)"))
        self.addOutput(QgsProcessingOutputString(self.TEXT, self.tr("Model card as text")))
        self.addOutput(QgsProcessingOutputString(self.ENGINE, self.tr("Engine used")))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, self.MODEL, context)
        html = self.parameterAsFileOutput(parameters, self.OUTPUT, context)
        engine = self.find_engine(feedback)
        made = make_folders([html])
        with self.engine_errors(feedback, lambda: remove_made_folders(made)):
            text = engine.model_card(model, html=html, log=feedback.pushConsoleInfo)
        for line in text.splitlines():
            feedback.pushInfo(line)
        feedback.setProgress(100)
        return {self.OUTPUT: html, self.TEXT: text, self.ENGINE: engine.kind}
