"""geoddu for QGIS: a Processing provider that segments rasters with DDU-Net checkpoints.

The folder is called ``geoddu_qgis``, not ``geoddu``: QGIS puts its plugins folder on
``sys.path``, and a plugin named ``geoddu`` would shadow the engine package.
"""


def classFactory(iface):  # noqa: N802 (QGIS's entry point name)
    from .plugin import GeodduPlugin

    return GeodduPlugin(iface)
