"""QGIS plugin entry: registers the Processing provider, a Raster menu entry and the
*Plugins > geoddu > Set up engine…* and *Hardware and precision…* actions."""

from qgis.core import Qgis, QgsApplication, QgsMessageLog, QgsTask

from . import engine_setup, hardware_info, settings
from .engine_bridge import EngineError
from .provider import GeodduProvider
from .setup_process import SetupCancelled, SetupError

LOG_TAG = "geoddu"


class EngineSetupTask(QgsTask):
    """:func:`engine_setup.run_setup` in the background (QGIS's task manager shows its progress).

    Its log goes to *Log Messages > geoddu*. When it succeeds, the plugin's settings point at the
    new environment (set-up ``env``); ``on_finished(ok, task)`` is then called in the main thread.
    """

    def __init__(self, plan, on_finished=None):
        super().__init__("geoddu: set up the engine", QgsTask.CanCancel)
        self.plan = plan
        self.on_finished = on_finished
        self.env_dir = None
        self.result = None  # engine_setup.SetupResult: what was installed
        self.error = None

    def run(self):
        try:
            self.result = engine_setup.run_setup(
                self.plan, log=_log, progress=self._progress, is_cancelled=self.isCanceled)
            self.env_dir = self.result.env_dir
        except SetupCancelled:
            self.error = "cancelled"
            _log("Set-up cancelled; the unfinished environment was removed.", Qgis.Warning)
            return False
        except Exception as exc:  # a failed step, a full disk, ...
            self.error = str(exc) or type(exc).__name__
            _log("Set-up failed: " + self.error, Qgis.Critical)
            return False
        return True

    def _progress(self, k, n, title):
        self.setProgress(100.0 * (k - 1) / n)

    def finished(self, ok):  # main thread
        if ok:
            settings.use_python_env(self.env_dir)
            _log(f"The geoddu provider now uses the Python environment {self.env_dir}")
        if self.on_finished is not None:
            self.on_finished(ok, self)


class HardwareTask(QgsTask):
    """:func:`hardware_info.ask_engine` in the background: finding the engine, importing torch
    and the precision probe take a few seconds. ``on_finished(ok, task)`` runs in the main
    thread with ``task.engine`` and ``task.report``, or ``task.error``."""

    def __init__(self, engine_settings, on_finished=None):
        super().__init__("geoddu: hardware and precision", QgsTask.CanCancel)
        self.engine_settings = engine_settings
        self.on_finished = on_finished
        self.engine = self.report = self.error = None

    def run(self):
        try:
            self.engine, self.report = hardware_info.ask_engine(self.engine_settings)
        except EngineError as exc:
            self.error = str(exc)
            _log(f"Hardware and precision: {self.error}\n{exc.details}".rstrip(),
                 Qgis.Warning)
            return False
        except Exception as exc:  # a plugin bug: say it, with its type
            self.error = f"{type(exc).__name__}: {exc}"
            return False
        return True

    def finished(self, ok):  # main thread
        if self.on_finished is not None:
            self.on_finished(ok, self)


def _log(message, level=Qgis.Info):
    QgsMessageLog.logMessage(message, LOG_TAG, level)


class GeodduPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None
        self.action = None
        self.setup_action = None
        self.setup_task = None
        self._setup_message = None
        self.hardware_action = None
        self.hardware_task = None
        self.hardware_box = None

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
        self.setup_action = QAction(plugin_icon(), "Set up engine…", self.iface.mainWindow())
        self.setup_action.triggered.connect(self.set_up_engine)
        self.iface.addPluginToMenu("geoddu", self.setup_action)
        self.hardware_action = QAction(plugin_icon(), "Hardware and precision…",
                                       self.iface.mainWindow())
        self.hardware_action.triggered.connect(self.show_hardware)
        self.iface.addPluginToMenu("geoddu", self.hardware_action)

    def open_dialog(self):
        import processing

        processing.execAlgorithmDialog("geoddu:segment")

    def set_up_engine(self):
        """Ask, then make the engine's environment in the background (:class:`EngineSetupTask`)
        with a progress bar and a Cancel button in the message bar."""
        from qgis.PyQt.QtWidgets import QMessageBox, QProgressBar, QPushButton

        window = self.iface.mainWindow()
        bar = self.iface.messageBar()
        if self.setup_task is not None:
            bar.pushInfo("geoddu", "The engine set-up is already running.")
            return
        try:
            plan = engine_setup.make_plan(profile_dir=QgsApplication.qgisSettingsDirPath())
        except SetupError as exc:
            QMessageBox.warning(window, "geoddu: Set up engine", str(exc))
            return
        answer = QMessageBox.question(
            window, "geoddu: Set up engine",
            "Create a Python environment for the geoddu engine and install PyTorch and geoddu "
            "into it? This downloads about 1 GB (several GB for the CUDA build) and takes a few "
            "minutes.\n\n" + plan.describe() + "\n\nThe geoddu algorithms then use it "
            "(Settings > Options > Processing > Providers > geoddu).")
        if answer != QMessageBox.Yes:
            return
        task = EngineSetupTask(plan, self._setup_finished)
        message = bar.createMessage("geoddu", "Setting up the engine… (log: Log Messages > "
                                    "geoddu)")
        progress = QProgressBar()
        progress.setRange(0, 100)
        message.layout().addWidget(progress)
        cancel = QPushButton("Cancel")
        cancel.clicked.connect(task.cancel)
        message.layout().addWidget(cancel)
        task.progressChanged.connect(lambda value: progress.setValue(int(value)))
        self._setup_message = bar.pushWidget(message, Qgis.Info)
        self.setup_task = task  # keep a reference: the task manager does not
        _log("Setting up the engine:\n" + plan.describe())
        QgsApplication.taskManager().addTask(task)

    def show_hardware(self):
        """Ask the engine what its machine has and how fast each precision runs there (in the
        background, :class:`HardwareTask`), then show it in a message box."""
        if self.hardware_task is not None:
            self.iface.messageBar().pushInfo("geoddu", "Already measuring the hardware.")
            return
        task = HardwareTask(settings.engine_settings(), self._hardware_finished)
        self.hardware_task = task  # keep a reference: the task manager does not
        self.iface.messageBar().pushInfo(
            "geoddu", "Measuring the hardware and each precision (a few seconds, once per "
                      "machine)…")
        QgsApplication.taskManager().addTask(task)

    def _hardware_finished(self, ok, task):
        self.hardware_task = None
        if self.iface is None:
            return
        if not ok:
            self.iface.messageBar().pushCritical(
                "geoddu", f"Hardware and precision: {task.error or 'cancelled'}")
            return
        from qgis.PyQt.QtWidgets import QMessageBox

        text = hardware_info.describe(task.report, task.engine)
        # Not modal: the user can keep it open beside the Processing dialog.
        box = QMessageBox(QMessageBox.Information, hardware_info.TITLE, text, QMessageBox.Ok,
                          self.iface.mainWindow())
        box.setModal(False)
        box.show()
        self.hardware_box = box
        _log(text)

    def _setup_finished(self, ok, task):
        self.setup_task = None
        if self.provider is not None:
            self.provider.refreshAlgorithms()
        if self.iface is None:
            return
        bar = self.iface.messageBar()
        try:
            if self._setup_message is not None:
                bar.popWidget(self._setup_message)
        except RuntimeError:  # closed by the user
            pass
        self._setup_message = None
        if ok:
            bar.pushSuccess("geoddu", f"Engine ready in {task.env_dir}; the geoddu algorithms "
                                      "use it.")
        elif task.error == "cancelled":
            bar.pushWarning("geoddu", "Engine set-up cancelled.")
        else:
            bar.pushCritical("geoddu", f"Engine set-up failed: {task.error} (details: Log "
                                       "Messages > geoddu)")

    def unload(self):
        if self.setup_task is not None:
            self.setup_task.on_finished = None
            self.setup_task.cancel()
            self.setup_task = None
        if self.action is not None and self.iface is not None:
            self.iface.removePluginRasterMenu("geoddu", self.action)
            self.action = None
        if self.setup_action is not None and self.iface is not None:
            self.iface.removePluginMenu("geoddu", self.setup_action)
            self.setup_action = None
        if self.hardware_task is not None:
            self.hardware_task.on_finished = None
            self.hardware_task = None
        if self.hardware_action is not None and self.iface is not None:
            self.iface.removePluginMenu("geoddu", self.hardware_action)
            self.hardware_action = None
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
