"""The QGIS plugin in a real QGIS: provider, processing.run, modeler, cancellation.

Every run segments a GeoTIFF written by GDAL in the test with a checkpoint from `geoddu init`,
through each engine set-up the machine has: ``cli`` (the geoddu command as a subprocess) and
``env`` (a configured Python environment imported in-process). test_qgis_install.py covers
engine discovery, the installable zip, ``qgis_process`` (set-up ``import``) and the desktop.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess

import pytest
from qgis_testdata import (
    EPSG,
    GEOTRANSFORM,
    HEIGHT,
    PLUGIN_PARENT,
    SUBIMAGE,
    WIDTH,
    georef,
    model_step,
)

SUBIMAGES = (HEIGHT // SUBIMAGE) * (WIDTH // SUBIMAGE)  # 3 x 4 = 12


def _run(params, feedback):
    import processing

    return processing.run("geoddu:segment", params, feedback=feedback)


# --- the plugin and its provider ------------------------------------------------------------


def test_provider_and_algorithm_are_registered(plugin):
    from qgis.core import QgsApplication, QgsProcessingAlgorithm

    registry = QgsApplication.processingRegistry()
    provider = registry.providerById("geoddu")
    assert provider is not None
    assert sorted(a.id() for a in provider.algorithms()) == [
        "geoddu:assess", "geoddu:modelcard", "geoddu:sample", "geoddu:segment", "geoddu:train",
        "geoddu:vectorize"]
    alg = registry.algorithmById("geoddu:segment")
    assert alg.displayName() == "Segment raster (DDU-Net)"
    names = [p.name() for p in alg.parameterDefinitions()]
    for required in ("INPUT", "MODEL", "OUTPUT", "DEVICE", "GPUS", "SUBIMAGE_SIZE",
                     "MEMORY_LIMIT", "PROBABILITIES", "CONFIDENCE", "POLYGONS", "MIN_AREA",
                     "SIMPLIFY"):
        assert required in names
    assert not alg.parameterDefinition("PROBABILITIES").createByDefault()
    flags = alg.flags()
    assert flags & QgsProcessingAlgorithm.FlagSupportsBatch
    assert flags & QgsProcessingAlgorithm.FlagCanCancel
    assert not flags & QgsProcessingAlgorithm.FlagNoThreading  # runs in the background
    assert not flags & QgsProcessingAlgorithm.FlagHideFromModeler


def test_plugin_folder_and_metadata():
    folder = PLUGIN_PARENT / "geoddu_qgis"
    meta = configparser.ConfigParser()
    meta.read(folder / "metadata.txt")
    general = meta["general"]
    for key in ("name", "qgisMinimumVersion", "description", "about", "version", "author",
                "email"):
        assert general.get(key), key
    assert general["hasProcessingProvider"] == "yes"
    assert (folder / general["icon"]).is_file()
    assert not (PLUGIN_PARENT / "geoddu").exists()  # would shadow the engine package


# --- processing.run through each engine set-up ------------------------------------------------


def test_segment_writes_a_georeferenced_class_map(plugin, data, mode, feedback_cls, geoddu_cli,
                                                  tmp_path):
    feedback = feedback_cls()
    dst = str(tmp_path / "classes.tif")
    result = _run({"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst}, feedback)

    assert result["OUTPUT"] == dst
    assert result["ENGINE"] == mode
    src, out = georef(data["image"]), georef(dst)
    assert out["size"] == src["size"] == (HEIGHT, WIDTH)
    assert out["epsg"] == src["epsg"] == EPSG
    assert out["transform"] == pytest.approx(src["transform"]) == GEOTRANSFORM
    assert out["count"] == 1 and out["dtype"] == "Byte" and out["nodata"] == 255
    assert set(out["values"].ravel().tolist()) <= {0, 1, 2}
    assert json.loads(out["class_names"]) == [c["name"] for c in data["classes"]]
    # The classes `geoddu segment` writes for the same scene and checkpoint (to float
    # rounding: another process, maybe another Python).
    reference = str(tmp_path / "reference.tif")
    subprocess.run([geoddu_cli, "segment", "-q", "-o", reference, "-m", data["model"], "--",
                    data["image"]], check=True)
    assert (out["values"] == georef(reference)["values"]).mean() > 0.999

    # Progress through the Processing feedback: every subimage encoded and decoded (one pass
    # interleaves the stages), never going back, ending at 100.
    values = feedback.progress_values
    assert len(values) >= 2 * SUBIMAGES
    assert values == sorted(values)
    assert values[-1] == pytest.approx(100)
    assert any("encode" in m for m in feedback.messages)
    assert any("decode" in m for m in feedback.messages)
    assert any(m.startswith("Engine:") for m in feedback.messages)
    assert not feedback.errors


def test_result_is_added_with_class_colours_and_names(plugin, data, mode, feedback_cls,
                                                      tmp_path):
    import processing
    from qgis.core import QgsPalettedRasterRenderer, QgsProject

    dst = str(tmp_path / "styled.tif")
    result = processing.runAndLoadResults(
        "geoddu:segment", {"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst},
        feedback=feedback_cls())
    project = QgsProject.instance()
    layers = [lyr for lyr in project.mapLayers().values() if lyr.source() == result["OUTPUT"]]
    assert len(layers) == 1
    renderer = layers[0].renderer()
    assert isinstance(renderer, QgsPalettedRasterRenderer)
    assert renderer.band() == 1
    got = [(int(c.value), c.label, [c.color.red(), c.color.green(), c.color.blue()])
           for c in renderer.classes()]
    want = [(i, c["name"], c["color"]) for i, c in enumerate(data["classes"])]
    assert got == want
    project.removeMapLayer(layers[0].id())
    del layers, renderer


def test_cancel_between_subimages_leaves_no_output(plugin, data, mode, feedback_cls, tmp_path):
    from qgis.core import QgsProcessingException

    feedback = feedback_cls(cancel_after=2)
    dst = str(tmp_path / "cancelled.tif")
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst}, feedback)
    assert feedback.isCanceled()
    assert len(feedback.progress_values) < 2 * SUBIMAGES  # it stopped early
    assert os.listdir(tmp_path) == []  # no output, and no temporary file either


def test_cancel_kills_a_stuck_command_and_cleans_up(plugin, data, engine_mode, feedback_cls,
                                                    monkeypatch, tmp_path):
    """A geoddu command that does not stop on SIGINT at once is killed, and its temporary
    files are removed by the plugin."""
    from geoddu_qgis.engine_bridge import CliEngine
    from qgis.core import QgsProcessingException

    engine_mode("cli")
    monkeypatch.setattr(CliEngine, "stop_grace_s", 0.0)
    feedback = feedback_cls(cancel_after=2)
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"],
              "OUTPUT": str(tmp_path / "killed.tif")}, feedback)
    assert os.listdir(tmp_path) == []


def test_engine_error_is_a_processing_error_with_its_message(plugin, data, mode, feedback_cls,
                                                             tmp_path):
    from qgis.core import QgsProcessingException

    dst = str(tmp_path / "never.tif")
    with pytest.raises(QgsProcessingException) as info:
        _run({"INPUT": data["image"], "MODEL": data["bad_model"], "OUTPUT": dst},
             feedback_cls())
    message = str(info.value)
    assert "\n" not in message.strip()
    assert data["bad_model"] in message and "checkpoint" in message
    assert os.listdir(tmp_path) == []


def test_probabilities_and_confidence_outputs(plugin, data, mode, feedback_cls, tmp_path):
    from osgeo import gdal

    paths = {name: str(tmp_path / f"{name.lower()}.tif")
             for name in ("OUTPUT", "PROBABILITIES", "CONFIDENCE")}
    result = _run({"INPUT": data["image"], "MODEL": data["model"], **paths}, feedback_cls())
    for name, path in paths.items():
        assert result[name] == path and os.path.isfile(path)
    probs = gdal.Open(paths["PROBABILITIES"])
    assert probs.RasterCount == len(data["classes"])
    assert gdal.GetDataTypeName(probs.GetRasterBand(1).DataType) == "Float32"
    total = sum(probs.GetRasterBand(b + 1).ReadAsArray() for b in range(probs.RasterCount))
    assert abs(total - 1).max() < 1e-4
    probs = None


def test_polygons_output_is_written_and_styled(plugin, data, mode, feedback_cls, tmp_path):
    import processing
    from osgeo import ogr
    from qgis.core import QgsCategorizedSymbolRenderer, QgsProject

    dst, polygons = str(tmp_path / "classes.tif"), str(tmp_path / "regions.gpkg")
    feedback = feedback_cls()
    result = processing.runAndLoadResults(
        "geoddu:segment",
        {"INPUT": data["image"], "MODEL": data["model"], "OUTPUT": dst, "POLYGONS": polygons,
         "MIN_AREA": 400.0},  # 4 pixels of 10 m x 10 m
        feedback=feedback)
    assert result["POLYGONS"] == polygons
    assert any("polygons" in m for m in feedback.messages)
    assert feedback.progress_values[-1] == pytest.approx(100)

    ds = ogr.Open(polygons)
    layer = ds.GetLayer(0)
    assert layer.GetGeomType() in (ogr.wkbPolygon, ogr.wkbMultiPolygon)
    assert layer.GetFeatureCount() > 0
    srs = layer.GetSpatialRef()
    srs.AutoIdentifyEPSG()
    assert int(srs.GetAuthorityCode(None)) == EPSG
    names = {c["name"] for c in data["classes"]}
    assert {f.GetField("class_name") for f in layer} <= names
    minx, maxx, miny, maxy = layer.GetExtent()
    x0, dx, _, y0, _, dy = GEOTRANSFORM
    assert (minx, maxx, miny, maxy) == pytest.approx(
        (x0, x0 + WIDTH * dx, y0 + HEIGHT * dy, y0))
    ds = None

    project = QgsProject.instance()
    loaded = [lyr for lyr in project.mapLayers().values()
              if lyr.source().split("|")[0] == polygons]
    assert len(loaded) == 1
    renderer = loaded[0].renderer()
    assert isinstance(renderer, QgsCategorizedSymbolRenderer)
    assert renderer.classAttribute() == "class_id"
    got = [(int(c.value()), c.label(), c.symbol().color().name()) for c in renderer.categories()]
    want = [(i, c["name"], "#{:02x}{:02x}{:02x}".format(*c["color"]))
            for i, c in enumerate(data["classes"])]
    assert got == want
    for lyr in list(project.mapLayers().values()):
        project.removeMapLayer(lyr.id())
    del loaded, renderer


def test_cancel_while_polygonising_leaves_no_output(plugin, data, mode, feedback_cls,
                                                    tmp_path):
    """Cancelled after the class map was written: that class map is removed too."""
    from qgis.core import QgsProcessingException

    class CancelAtPolygons(feedback_cls):
        def setProgressText(self, text):  # noqa: N802
            super().setProgressText(text)
            if "polygons" in text:
                self.cancel()

    feedback = CancelAtPolygons()
    with pytest.raises(QgsProcessingException, match="cancel"):
        _run({"INPUT": data["image"], "MODEL": data["model"],
              "OUTPUT": str(tmp_path / "classes.tif"),
              "PROBABILITIES": str(tmp_path / "probs.tif"),
              "POLYGONS": str(tmp_path / "regions.gpkg")}, feedback)
    assert len(feedback.progress_values) >= 2 * SUBIMAGES  # the class map was done
    assert os.listdir(tmp_path) == []


def test_parameters_reach_the_engine(plugin, data, mode, feedback_cls, tmp_path):
    """Bands and subimage size are passed on: a bad band number comes back as the engine's
    error, and another subimage size changes the number of progress steps."""
    from qgis.core import QgsProcessingException

    with pytest.raises(QgsProcessingException, match="band"):
        _run({"INPUT": data["image"], "MODEL": data["model"], "BANDS": [1, 2, 7],
              "OUTPUT": str(tmp_path / "bands.tif")}, feedback_cls())
    feedback = feedback_cls()
    _run({"INPUT": data["image"], "MODEL": data["model"], "BANDS": [3, 2, 1],
          "SUBIMAGE_SIZE": 2 * SUBIMAGE, "OUTPUT": str(tmp_path / "big.tif")}, feedback)
    assert any("(4 steps)" in m for m in feedback.messages)  # 2 x 2 subimages of 64 px
    # MEMORY_LIMIT is --memory-limit: too small, the engine's one line, and no output.
    with pytest.raises(QgsProcessingException, match=r"give --memory-limit \d+M or more"):
        _run({"INPUT": data["image"], "MODEL": data["model"], "MEMORY_LIMIT": "50M",
              "OUTPUT": str(tmp_path / "limited.tif")}, feedback_cls())
    assert not (tmp_path / "limited.tif").exists()


def _model_at(data, geoddu_cli, folder, metres: float) -> str:
    """The test checkpoint with a card that says it was trained at `metres` pixels, written by
    the Python of the geoddu command's environment (beside the command, as in a venv)."""
    path = str(folder / f"model-{metres:g}m.pt")
    shutil.copyfile(data["model"], path)
    python = os.path.join(os.path.dirname(geoddu_cli), "python")
    code = ("import sys; from geoddu.checkpoint import update_card; update_card(sys.argv[1], "
            "{'pixel_size': [float(sys.argv[2])] * 2, 'crs_units': 'metre'})")
    subprocess.run([python, "-c", code, path, str(metres)], check=True, capture_output=True)
    return path


def test_resample_output_grid_and_strict_reach_the_engine(plugin, data, mode, feedback_cls,
                                                          geoddu_cli, tmp_path):
    """RESAMPLE, OUTPUT_GRID and STRICT are --resample, --output-grid and --strict. The model
    was trained at 20 m, the input has 10 m pixels: STRICT stops the run with the engine's one
    line and nothing written; RESAMPLE reads the input at 20 m, the class map on the input's
    grid or, with OUTPUT_GRID model, on the 20 m grid."""
    from qgis.core import QgsProcessingException

    model = _model_at(data, geoddu_cli, tmp_path, 20.0)
    strict = str(tmp_path / "strict.tif")
    with pytest.raises(QgsProcessingException, match="10 m pixels but the model was trained "
                                                     "on 20 m"):
        _run({"INPUT": data["image"], "MODEL": model, "STRICT": True, "OUTPUT": strict},
             feedback_cls())
    assert not os.path.exists(strict)

    scene_grid = str(tmp_path / "scene-grid.tif")
    _run({"INPUT": data["image"], "MODEL": model, "RESAMPLE": "average", "OUTPUT": scene_grid},
         feedback_cls())
    out = georef(scene_grid)
    assert out["size"] == (HEIGHT, WIDTH)
    assert out["transform"] == pytest.approx(GEOTRANSFORM)
    reference = str(tmp_path / "reference.tif")
    subprocess.run([geoddu_cli, "segment", "-q", "-o", reference, "-m", model, "--resample",
                    "average", "--", data["image"]], check=True)
    assert (out["values"] == georef(reference)["values"]).mean() > 0.999

    model_grid = str(tmp_path / "model-grid.tif")
    _run({"INPUT": data["image"], "MODEL": model, "RESAMPLE": "nearest",
          "OUTPUT_GRID": "model", "STRICT": True, "OUTPUT": model_grid}, feedback_cls())
    out = georef(model_grid)
    assert out["size"] == (HEIGHT // 2, WIDTH // 2)
    assert out["transform"][1] == pytest.approx(20.0)
    assert out["transform"][5] == pytest.approx(-20.0)


def test_area_of_interest_layer(plugin, data, mode, feedback_cls, tmp_path):
    """An optional polygon layer (here a memory layer in another CRS) limits the class map to
    its pixels; the rest is nodata."""
    from osgeo import gdal
    from qgis.core import (
        QgsCoordinateReferenceSystem,
        QgsCoordinateTransform,
        QgsFeature,
        QgsGeometry,
        QgsProject,
        QgsRectangle,
        QgsVectorLayer,
    )

    x0, dx, _, y0, _, dy = GEOTRANSFORM
    rect = QgsRectangle(x0 + 10 * dx, y0 + 60 * dy, x0 + 50 * dx, y0 + 20 * dy)
    to_wgs84 = QgsCoordinateTransform(QgsCoordinateReferenceSystem(f"EPSG:{EPSG}"),
                                      QgsCoordinateReferenceSystem("EPSG:4326"),
                                      QgsProject.instance())
    geom = QgsGeometry.fromRect(rect)
    geom.transform(to_wgs84)
    aoi = QgsVectorLayer("Polygon?crs=EPSG:4326", "aoi", "memory")
    feature = QgsFeature()
    feature.setGeometry(geom)
    aoi.dataProvider().addFeatures([feature])
    dst = str(tmp_path / "aoi.tif")
    _run({"INPUT": data["image"], "MODEL": data["model"], "AOI": aoi, "OUTPUT": dst},
         feedback_cls())
    values = gdal.Open(dst).ReadAsArray()
    assert (values[30:50, 20:40] != 255).all()  # well inside the area
    assert (values[:, 70:] == 255).all() and (values[80:, :] == 255).all()  # well outside
    del aoi


def test_in_a_processing_model(plugin, data, engine_mode, tmp_path):
    """The algorithm as a step of a graphical model (what the modeler builds)."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelParameter,
        QgsProcessingParameterFile,
        QgsProcessingParameterRasterLayer,
    )

    engine_mode("cli")
    model = QgsProcessingModelAlgorithm("segment scene", "tests")
    model.addModelParameter(QgsProcessingParameterRasterLayer("scene", "Scene"),
                            QgsProcessingModelParameter("scene"))
    model.addModelParameter(QgsProcessingParameterFile("ckpt", "Checkpoint"),
                            QgsProcessingModelParameter("ckpt"))
    model_step(model, "geoddu:segment", "seg",
               {"INPUT": QgsProcessingModelChildParameterSource.fromModelParameter("scene"),
                "MODEL": QgsProcessingModelChildParameterSource.fromModelParameter("ckpt")},
               {"OUTPUT": ("landcover", "Land cover")})
    dst = str(tmp_path / "model-out.tif")
    result = processing.run(model, {"scene": data["image"], "ckpt": data["model"],
                                    "seg:landcover": dst})
    assert result["seg:landcover"] == dst
    assert georef(dst)["transform"] == pytest.approx(GEOTRANSFORM)
