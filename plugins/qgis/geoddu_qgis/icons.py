import os

from qgis.PyQt.QtGui import QIcon

HERE = os.path.dirname(__file__)


def plugin_icon() -> QIcon:
    return QIcon(os.path.join(HERE, "icon.png"))
