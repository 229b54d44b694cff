"""The Segment algorithm's mosaic in a real QGIS: several raster layers (or a VRT) segmented as
ONE scene (MOSAIC_WITH), one class map over the union or one per input (TILE_OUTPUTS).

The scene of the other tests is cut into two overlapping sheets (GDAL, in the test: QGIS's
Python has no rasterio); the mosaic of the sheets must give the uncut scene's classes in every
pixel, through both engine set-ups (``cli``: the request as JSON to the geoddu command;
``env``: in-process).
"""

from __future__ import annotations

import os

import pytest
from qgis_testdata import EPSG, GEOTRANSFORM, HEIGHT, WIDTH, georef

# West sheet: columns 0-59; east sheet: columns 45-127 (15 columns overlap). 45 and 60 are not
# multiples of the model's subimage size or stride: a sheet segmented on its own differs.
WEST, EAST = (0, 60), (45, WIDTH)


def _run(params, feedback, load=False):
    import processing

    run = processing.runAndLoadResults if load else processing.run
    return run("geoddu:segment", params, feedback=feedback)


@pytest.fixture(scope="module")
def sheets(data, tmp_path_factory):
    """The scene as two GeoTIFF sheets, and a VRT over them (GDAL's BuildVRT)."""
    from osgeo import gdal

    folder = tmp_path_factory.mktemp("sheets")
    paths = {}
    for name, (c0, c1) in (("west", WEST), ("east", EAST)):
        paths[name] = str(folder / f"{name}.tif")
        gdal.Translate(paths[name], data["image"], srcWin=[c0, 0, c1 - c0, HEIGHT])
    paths["vrt"] = str(folder / "sheets.vrt")
    gdal.BuildVRT(paths["vrt"], [paths["west"], paths["east"]])
    return paths


@pytest.fixture(scope="module")
def wholes() -> dict:
    return {}


@pytest.fixture
def whole(plugin, data, mode, feedback_cls, wholes, tmp_path_factory):
    """The uncut scene's class map, through the same engine set-up (once per set-up)."""
    if mode not in wholes:
        dst = str(tmp_path_factory.mktemp("whole") / "whole.tif")
        _run({"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst}, feedback_cls())
        wholes[mode] = georef(dst)["values"]
    return wholes[mode]


def test_two_layers_as_one_mosaic_equal_the_uncut_scene(plugin, data, sheets, whole, mode,
                                                        feedback_cls, tmp_path):
    dst = str(tmp_path / "mosaic.tif")
    result = _run({"INPUT": sheets["west"], "MOSAIC_WITH": [sheets["east"]],
                   "MODEL": data["model"], "OUTPUT": dst}, feedback_cls())
    assert result["OUTPUT"] == dst and result["ENGINE"] == mode
    out = georef(dst)
    assert out["size"] == (HEIGHT, WIDTH) and out["epsg"] == EPSG
    assert out["transform"] == pytest.approx(GEOTRANSFORM)
    assert int((out["values"] != whole).sum()) == 0  # 0 pixels differ

    # A VRT over the sheets as the one input is one scene already.
    dst = str(tmp_path / "vrt.tif")
    _run({"INPUT": sheets["vrt"], "MODEL": data["model"], "OUTPUT": dst}, feedback_cls())
    assert int((georef(dst)["values"] != whole).sum()) == 0

    # The sheets each on their own have seams: the mosaic is what makes the difference.
    alone = str(tmp_path / "east-alone.tif")
    _run({"INPUT": sheets["east"], "MODEL": data["model"], "OUTPUT": alone}, feedback_cls())
    assert (georef(alone)["values"] != whole[:, EAST[0]:EAST[1]]).any()


def test_per_tile_class_maps_on_each_sheets_grid(plugin, data, sheets, whole, mode,
                                                 feedback_cls, tmp_path):
    from qgis.core import (
        QgsPalettedRasterRenderer,
        QgsProcessing,
        QgsProcessingOutputLayerDefinition,
        QgsProject,
    )

    tiles = tmp_path / "tiles" / "new"  # made by the algorithm
    params = {"INPUT": sheets["west"], "MOSAIC_WITH": [sheets["east"]], "MODEL": data["model"],
              "TILE_OUTPUTS": str(tiles)}
    if mode == "env":
        # The Class map as the dialog leaves it by default (a temporary output): not written.
        # (Through cli it is left out, as processing.run callers do.)
        params["OUTPUT"] = QgsProcessingOutputLayerDefinition(QgsProcessing.TEMPORARY_OUTPUT)
    feedback = feedback_cls()
    result = _run(params, feedback, load=True)
    assert not feedback.errors  # no "layers not correctly generated": OUTPUT is not loaded
    assert result["TILE_OUTPUTS"] == str(tiles)
    assert "OUTPUT" not in result  # the engine writes one or the other
    maps = sorted(name for name in os.listdir(tiles) if name.endswith(".tif"))
    assert maps == ["east.tif", "west.tif"]  # (with their .aux.xml: class names)
    for name, (c0, c1) in (("west", WEST), ("east", EAST)):
        out, sheet = georef(str(tiles / f"{name}.tif")), georef(sheets[name])
        assert out["size"] == sheet["size"] == (HEIGHT, c1 - c0)
        assert out["transform"] == pytest.approx(sheet["transform"])
        assert out["epsg"] == EPSG and out["dtype"] == "Byte" and out["nodata"] == 255
        assert int((out["values"] != whole[:, c0:c1]).sum()) == 0

    # Loaded and styled like the class map.
    project = QgsProject.instance()
    loaded = {lyr.name(): lyr for lyr in project.mapLayers().values()
              if os.path.dirname(lyr.source()) == str(tiles)}
    assert sorted(loaded) == ["east", "west"]
    for layer in loaded.values():
        renderer = layer.renderer()
        assert isinstance(renderer, QgsPalettedRasterRenderer)
        assert [c.label for c in renderer.classes()] == [c["name"] for c in data["classes"]]
    for layer in list(loaded.values()):
        project.removeMapLayer(layer.id())
    del loaded, layer, renderer


def test_mosaic_refusals_are_one_line_processing_errors(plugin, data, sheets, mode,
                                                        feedback_cls, tmp_path):
    from osgeo import gdal
    from qgis.core import QgsProcessingException

    # A class map file and per-tile maps: the engine writes one or the other.
    out = tmp_path / "out"
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": sheets["west"], "MOSAIC_WITH": [sheets["east"]],
              "MODEL": data["model"], "OUTPUT": str(out / "map.tif"),
              "TILE_OUTPUTS": str(out / "tiles")}, feedback_cls())
    assert "\n" not in str(info.value).strip() and "--output-dir" in str(info.value)

    # A sheet in another CRS: refused before any work, naming it.
    utm32 = str(tmp_path / "utm32.tif")
    gdal.Translate(utm32, sheets["east"], outputSRS="EPSG:32632")
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": sheets["west"], "MOSAIC_WITH": [utm32], "MODEL": data["model"],
              "OUTPUT": str(out / "map.tif")}, feedback_cls())
    message = str(info.value).strip()
    assert "\n" not in message and "CRS" in message and "utm32.tif" in message
    assert not out.exists()  # nothing left, not even the folders made for the outputs
    assert sorted(os.listdir(tmp_path)) == ["utm32.tif"]
