"""The plugin's settings: which engine set-up to use. Shown in Settings > Options >
Processing > Providers > geoddu.

Values are stored by Processing under ``Processing/Configuration/<NAME>`` in the QGIS profile and
read from there at run time (so they also apply in ``qgis_process``). The environment variables
of the same names (see :mod:`discovery`) win over them.
"""

from __future__ import annotations

from qgis.core import QgsSettings

from . import discovery

GROUP = "geoddu"
ENGINE_MODE = discovery.ENV_MODE  # "GEODDU_ENGINE"
PYTHON_ENV = discovery.ENV_PYTHON_ENV  # "GEODDU_PYTHON_ENV"
CLI = discovery.ENV_CLI  # "GEODDU_CLI"
MODE_LABELS = [
    "auto: geoddu in QGIS's Python, else the Python environment, else the geoddu command",
    "import: geoddu installed in QGIS's Python",
    "env: the Python environment below",
    "cli: the geoddu command",
]


def _key(name: str) -> str:
    return "Processing/Configuration/" + name


def engine_settings() -> dict:
    """Keyword arguments for :func:`discovery.find_engine` from the saved settings."""
    qs = QgsSettings()
    try:
        mode = discovery.MODES[int(qs.value(_key(ENGINE_MODE), 0))]
    except (TypeError, ValueError, IndexError):
        mode = "auto"
    return {
        "mode": mode,
        "python_env": str(qs.value(_key(PYTHON_ENV), "") or ""),
        "cli": str(qs.value(_key(CLI), "") or ""),
    }


def use_python_env(path: str) -> None:
    """Point the provider at the Python environment ``path`` (set-up ``env``), as a user would in
    the options dialog: what *Set up engine* does once its environment is ready."""
    values = {ENGINE_MODE: discovery.MODES.index("env"), PYTHON_ENV: str(path)}
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        ProcessingConfig = None  # noqa: N806
    for name, value in values.items():
        if ProcessingConfig is not None and name in ProcessingConfig.settings:
            ProcessingConfig.setSettingValue(name, value)  # saves it too
        else:
            QgsSettings().setValue(_key(name), value)


def register() -> None:
    """Add the settings to Processing's options dialog (no-op without the processing plugin)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig, Setting
    except ImportError:
        return
    from .icons import plugin_icon

    ProcessingConfig.setGroupIcon(GROUP, plugin_icon())
    ProcessingConfig.addSetting(Setting(
        GROUP, ENGINE_MODE, "Engine set-up", MODE_LABELS[0], valuetype=Setting.SELECTION,
        options=MODE_LABELS))
    ProcessingConfig.addSetting(Setting(
        GROUP, PYTHON_ENV, "Python environment with geoddu installed (folder)", "",
        valuetype=Setting.FOLDER))
    ProcessingConfig.addSetting(Setting(
        GROUP, CLI, "geoddu command (empty: the one on PATH)", "", valuetype=Setting.FILE))
    ProcessingConfig.readSettings()


def unregister() -> None:
    try:
        from processing.core.ProcessingConfig import ProcessingConfig
    except ImportError:
        return
    for name in (ENGINE_MODE, PYTHON_ENV, CLI):
        if name in ProcessingConfig.settings:
            ProcessingConfig.removeSetting(name)
