"""geoddu:vectorize in a real QGIS: a class map written here (with the engine's class names and
colour table) into polygons, through both engine set-ups, with progress, styling,
cancellation and one-line errors."""

from __future__ import annotations

import json
import os

import pytest
from qgis_testdata import CLASSES, EPSG, GEOTRANSFORM

SIZE = 64


@pytest.fixture(scope="module")
def class_map(tmp_path_factory, qgis_app) -> str:
    """A 64 x 64 class map: three blocks of classes 0, 1, 2, a few single-pixel specks of
    class 2 inside class 0, and a nodata (255) corner."""
    import numpy as np
    from osgeo import gdal, osr

    path = tmp_path_factory.mktemp("vectorize") / "classes.tif"
    values = np.zeros((SIZE, SIZE), np.uint8)
    values[:, 32:] = 1
    values[32:, 32:] = 2
    values[8, 8] = values[20, 12] = values[12, 24] = 2  # specks, 100 m² each
    values[:8, 56:] = 255
    ds = gdal.GetDriverByName("GTiff").Create(str(path), SIZE, SIZE, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(GEOTRANSFORM)
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    ds.SetProjection(srs.ExportToWkt())
    band = ds.GetRasterBand(1)
    band.WriteArray(values)
    band.SetNoDataValue(255)
    table = gdal.ColorTable()
    for i, c in enumerate(CLASSES):
        table.SetColorEntry(i, tuple(c["color"]) + (255,))
    band.SetColorTable(table)
    ds.SetMetadataItem("CLASS_NAMES", json.dumps([c["name"] for c in CLASSES]))
    ds = None
    return str(path)


def _features(path):
    from osgeo import ogr

    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    srs = layer.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    rows = [(f.GetField("class_id"), f.GetField("class_name"), f.GetGeometryRef().GetArea())
            for f in layer]
    epsg = int(srs.GetAuthorityCode(None))
    ds = None
    return rows, epsg


def test_vectorize_writes_styled_polygons(plugin, class_map, mode, feedback_cls, tmp_path):
    import processing
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject

    dst = str(tmp_path / "out" / "regions.gpkg")  # its folder is made
    feedback = feedback_cls()
    result = processing.runAndLoadResults(
        "geoddu:vectorize", {"INPUT": class_map, "OUTPUT": dst}, feedback=feedback)
    assert result["OUTPUT"] == dst and result["ENGINE"] == mode
    rows, epsg = _features(dst)
    assert epsg == EPSG
    names = [c["name"] for c in CLASSES]
    assert {(class_id, name) for class_id, name, _ in rows} == {
        (i, n) for i, n in enumerate(names)}
    assert sum(1 for class_id, _, _ in rows if class_id == 2) == 4  # the block and 3 specks
    area = sum(a for _, _, a in rows)
    assert area == pytest.approx((SIZE * SIZE - 8 * 8) * 100.0)  # every pixel but nodata
    assert feedback.progress_values and feedback.progress_values[-1] == pytest.approx(100)
    assert any("geoddu:" in m for m in feedback.messages)

    project = QgsProject.instance()
    loaded = [lyr for lyr in project.mapLayers().values() if lyr.source().split("|")[0] == dst]
    assert len(loaded) == 1
    renderer = loaded[0].renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert [c.label() for c in renderer.categories()] == names
    for lyr in list(project.mapLayers().values()):
        project.removeMapLayer(lyr.id())
    del loaded, renderer


def test_min_area_and_simplify_reach_the_engine(plugin, class_map, mode, feedback_cls, tmp_path):
    import processing

    dst = str(tmp_path / "sieved.geojson")
    feedback = feedback_cls()
    processing.run("geoddu:vectorize", {"INPUT": class_map, "MIN_AREA": 250.0,
                                        "SIMPLIFY": 5.0, "OUTPUT": dst}, feedback=feedback)
    rows, _ = _features(dst)
    # The 100 m² specks are merged into their neighbour: one polygon per class block.
    assert sorted(class_id for class_id, _, _ in rows) == [0, 1, 2]
    if mode == "env":  # in-process, every stage reports (the command shows as one step)
        assert any("sieve" in m for m in feedback.messages)
        assert any("simplify" in m for m in feedback.messages)


def test_cancel_and_errors_leave_nothing(plugin, class_map, mode, feedback_cls, tmp_path):
    import processing
    from osgeo import gdal
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="cancel"):
        processing.run("geoddu:vectorize", {"INPUT": class_map, "OUTPUT": str(
            tmp_path / "x" / "cancelled.gpkg")}, feedback=feedback_cls(cancel_at="geoddu:"))
    not_a_map = tmp_path / "image.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(not_a_map), 8, 8, 1, gdal.GDT_Float32)
    del ds  # closed: a float raster without a CRS
    with pytest.raises(QgsProcessingException) as info:
        processing.run("geoddu:vectorize", {"INPUT": str(not_a_map), "OUTPUT": str(
            tmp_path / "y" / "bad.gpkg")}, feedback=feedback_cls())
    assert "\n" not in str(info.value).strip()
    assert sorted(os.listdir(tmp_path)) == ["image.tif"]  # no output, no folder made for it


def test_memory_limit_reaches_the_engine(plugin, class_map, mode, feedback_cls, tmp_path):
    """MEMORY_LIMIT is `--memory-limit`: a limit too small is the engine's one line naming the
    smallest that would do, and nothing is written; a roomy one runs."""
    import processing
    from qgis.core import QgsProcessingException

    dst = tmp_path / "limited.gpkg"
    with pytest.raises(QgsProcessingException, match=r"give --memory-limit \d+M or more"):
        processing.run("geoddu:vectorize", {"INPUT": class_map, "MEMORY_LIMIT": "1M",
                                            "OUTPUT": str(dst)}, feedback=feedback_cls())
    assert not dst.exists()
    processing.run("geoddu:vectorize", {"INPUT": class_map, "MEMORY_LIMIT": "4G",
                                        "OUTPUT": str(dst)}, feedback=feedback_cls())
    rows, _ = _features(str(dst))
    assert sum(1 for class_id, _, _ in rows if class_id == 2) == 4
