"""QGIS (and the GDAL it uses) sees the class names of a class map written by geoddu.

geoddu keeps them, besides its own ``CLASS_NAMES`` tag, as GDAL category names and a thematic
raster attribute table in the PAM sidecar ``NAME.aux.xml``: what GIS tools read as the legend.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


@pytest.fixture(scope="module")
def class_map(data, geoddu_cli, tmp_path_factory) -> str:
    """A class map written by the geoddu command, as a user would."""
    folder = tmp_path_factory.mktemp("class-names")
    out = folder / "landcover.tif"
    subprocess.run(
        [geoddu_cli, "segment", data["image"], "-o", str(out), "-m", data["model"], "--quiet"],
        check=True, capture_output=True, text=True, timeout=300,
    )
    assert (folder / "landcover.tif.aux.xml").is_file()
    return str(out)


def _names(data) -> list[str]:
    return [c["name"] for c in data["classes"]]


def test_gdal_reads_category_names_and_attribute_table(class_map, data):
    from osgeo import gdal

    ds = gdal.Open(class_map)
    # GDAL 3.6's GeoTIFF driver loads the PAM sidecar lazily and GetCategoryNames alone does
    # not trigger it; any client reads georeferencing or metadata first (gdalinfo, QGIS).
    assert ds.GetMetadataItem("CLASS_NAMES") is not None
    band = ds.GetRasterBand(1)
    assert band.GetCategoryNames() == _names(data)
    rat = band.GetDefaultRAT()
    assert rat is not None and rat.GetTableType() == gdal.GRTT_THEMATIC
    usages = [rat.GetUsageOfCol(i) for i in range(rat.GetColumnCount())]
    assert usages == [gdal.GFU_MinMax, gdal.GFU_Name, gdal.GFU_Red, gdal.GFU_Green,
                      gdal.GFU_Blue, gdal.GFU_Alpha]
    assert rat.GetRowCount() == len(data["classes"])
    for row, c in enumerate(data["classes"]):
        assert rat.GetValueAsInt(row, 0) == row
        assert rat.GetValueAsString(row, 1) == c["name"]
        assert [rat.GetValueAsInt(row, col) for col in (2, 3, 4, 5)] == [*c["color"], 255]
    # The sidecar adds to the file's own metadata: colour table and tags still read.
    assert band.GetColorTable().GetColorEntry(1)[:3] == tuple(data["classes"][1]["color"])
    assert "Categories:" in gdal.Info(class_map)
    ds = None


def test_qgis_shows_the_names_without_the_plugin(qgis_app, class_map, data):
    """QGIS's own GDAL provider labels the colour table with the category names, so a class
    map opened by hand (Add Raster Layer) shows them in its legend."""
    from qgis.core import QgsPalettedRasterRenderer, QgsRasterLayer

    layer = QgsRasterLayer(class_map, "landcover", "gdal")
    assert layer.isValid()
    items = layer.dataProvider().colorTable(1)
    labels = {int(item.value): item.label for item in items}
    assert [labels[i] for i in range(len(data["classes"]))] == _names(data)
    classes = QgsPalettedRasterRenderer.colorTableToClassData(items)
    assert [c.label for c in classes[: len(data["classes"])]] == _names(data)
    renderer = layer.renderer()
    if isinstance(renderer, QgsPalettedRasterRenderer):  # QGIS's default for a palette band
        legend = [label for label, _ in renderer.legendSymbologyItems()]
        assert legend[: len(data["classes"])] == _names(data)
    if hasattr(layer, "attributeTable"):  # QGIS >= 3.30 reads the attribute table itself
        table = layer.attributeTable(1)
        assert table is not None and table.rowCount() == len(data["classes"])


def test_plugin_styling_prefers_category_names(qgis_app, plugin, class_map, data, tmp_path):
    from geoddu_qgis.styling import apply_class_style, read_classes
    from qgis.core import QgsRasterLayer

    layer = QgsRasterLayer(class_map, "landcover", "gdal")
    assert apply_class_style(layer)
    legend = [label for label, _ in layer.renderer().legendSymbologyItems()]
    assert legend == _names(data)

    # Category names win over the CLASS_NAMES tag when both are there ...
    copy = tmp_path / "renamed.tif"
    shutil.copy(class_map, copy)
    xml = open(class_map + ".aux.xml", encoding="utf-8").read()
    for name in _names(data):
        xml = xml.replace(f">{name}<", f">{name} & co<".replace("&", "&amp;"))
    (tmp_path / "renamed.tif.aux.xml").write_text(xml, encoding="utf-8")
    assert [c["name"] for c in read_classes(str(copy))] == [f"{n} & co" for n in _names(data)]
    # ... and without the sidecar the tag still names the classes.
    (tmp_path / "renamed.tif.aux.xml").unlink()
    classes = read_classes(str(copy))
    assert [c["name"] for c in classes] == _names(data)
    assert [c["color"] for c in classes] == [c["color"] for c in data["classes"]]
