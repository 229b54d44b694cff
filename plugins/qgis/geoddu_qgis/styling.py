"""Show a geoddu class map with its classes' colours and names (a paletted renderer).

The engine writes both into the output GeoTIFF: a colour table on band 1, the band's GDAL category
names (with a raster attribute table, in the PAM sidecar ``NAME.aux.xml``) and the metadata tag
``CLASS_NAMES`` (a JSON list of names, also in older outputs). They are read back here with GDAL,
category names first, so this works whichever way the engine ran (in-process or as a subprocess).
"""

from __future__ import annotations

import json

from osgeo import gdal
from qgis.core import (
    QgsCategorizedSymbolRenderer,
    QgsFillSymbol,
    QgsPalettedRasterRenderer,
    QgsProcessingLayerPostProcessorInterface,
    QgsRendererCategory,
)
from qgis.PyQt.QtGui import QColor

NODATA = 255


def read_classes(path: str) -> list[dict]:
    """``[{"value": i, "name": str, "color": [r, g, b]}, ...]`` from a class map's GeoTIFF."""
    ds = gdal.Open(path)
    if ds is None:
        return []
    try:
        # The tag first: GDAL 3.6's GeoTIFF driver loads the PAM sidecar lazily, and asking
        # only for category names does not trigger it; reading metadata does.
        tag_names = _tag_names(ds)
        band = ds.GetRasterBand(1)
        table = band.GetColorTable()
        names = _category_names(band) or tag_names
        count = len(names)
        if not names and table is not None:
            # No names: GeoTIFF colour tables have 256 entries; keep up to the last one that is
            # not the default black.
            entries = range(min(table.GetCount(), NODATA))
            count = max((i + 1 for i in entries if table.GetColorEntry(i)[:3] != (0, 0, 0)),
                        default=0)
        classes = []
        for value in range(count):
            color = list(table.GetColorEntry(value)[:3]) if table is not None else None
            if color is None:
                color = _fallback_color(value)
            name = str(names[value]) if value < len(names) else f"class {value}"
            classes.append({"value": value, "name": name, "color": color})
        return classes
    finally:
        ds = None


def _category_names(band) -> list[str]:
    """GDAL's category names of the band (geoddu writes them in the PAM sidecar
    ``NAME.aux.xml``; other tools read them too), without trailing empty ones (nodata)."""
    names = list(band.GetCategoryNames() or [])
    while names and not names[-1]:
        names.pop()
    return names[:NODATA]


def _tag_names(ds) -> list[str]:
    """The ``CLASS_NAMES`` tag (a JSON list) of class maps written before category names."""
    try:
        names = json.loads(ds.GetMetadataItem("CLASS_NAMES") or "[]")
    except ValueError:
        return []
    return names if isinstance(names, list) else []


def paletted_renderer(layer, classes: list[dict]) -> QgsPalettedRasterRenderer:
    items = [QgsPalettedRasterRenderer.Class(c["value"], QColor(*c["color"]), c["name"])
             for c in classes]
    return QgsPalettedRasterRenderer(layer.dataProvider(), 1, items)


def apply_class_style(layer, classes: list[dict] | None = None) -> bool:
    """Give ``layer`` a paletted renderer with the class colours and names. True if done."""
    if layer is None or not layer.isValid():
        return False
    if classes is None:
        classes = read_classes(layer.source())
    if not classes:
        return False
    layer.setRenderer(paletted_renderer(layer, classes))
    layer.triggerRepaint()
    return True


class ClassMapStyler(QgsProcessingLayerPostProcessorInterface):
    """Applied by Processing to the output layer once it is loaded into the project."""

    # Processing keeps only a C++ pointer to a post-processor: hold the Python objects here so
    # that they outlive the algorithm run that created them.
    _alive: list[ClassMapStyler] = []

    def __init__(self, classes: list[dict], layer_name: str | None = None):
        super().__init__()
        self.classes = classes
        self.layer_name = layer_name

    @classmethod
    def create(cls, classes: list[dict], layer_name: str | None = None) -> ClassMapStyler:
        styler = cls(classes, layer_name)
        cls._alive = cls._alive[-63:] + [styler]
        return styler

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (Qt naming)
        if apply_class_style(layer, self.classes) and feedback is not None:
            feedback.pushInfo(f"Styled {layer.name()} with {len(self.classes)} classes: "
                              + ", ".join(c["name"] for c in self.classes))


def categorized_renderer(classes: list[dict], field: str = "class_id"):
    """Polygons coloured by class: one category per class, labelled with its name."""
    categories = []
    for c in classes:
        symbol = QgsFillSymbol.createSimple({
            "color": "{},{},{},255".format(*c["color"]),
            "outline_style": "no",
        })
        categories.append(QgsRendererCategory(c["value"], symbol, c["name"]))
    return QgsCategorizedSymbolRenderer(field, categories)


class ClassPolygonStyler(ClassMapStyler):
    """Applied by Processing to the polygons layer: categories by class_id."""

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (Qt naming)
        if layer is None or not layer.isValid() or not self.classes:
            return
        if layer.fields().indexOf("class_id") < 0:
            return
        layer.setRenderer(categorized_renderer(self.classes))
        layer.triggerRepaint()


def _fallback_color(value: int) -> list[int]:
    palette = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return list(palette[value % len(palette)])
