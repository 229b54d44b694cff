"""geoddu:train in a real QGIS: a raster and labelled polygons written here, a short training
with a tiny DDU-Net, and geoddu:segment with the checkpoint it wrote.

The raster has two clearly different halves (green "forest" on the left, red "urban" on the
right); a handful of polygons label parts of each. Through both engine set-ups (``env``: the
trainer's Python API in-process; ``cli``: ``geoddu train --request -`` as a subprocess, read
through its JSON progress), in a model chained to geoddu:segment, with a label raster,
cancelled and resumed, and from ``qgis_process``; and the bridge alone: one request, the same
events and the same run through both routes.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys

import pytest
from qgis_testdata import EPSG, PLUGIN_PARENT, missing, model_step, recording_command

SIZE = 96
X0, Y0, PIXEL = 500000.0, 4600000.0, 10.0
#: A tiny, quick model and run (a few seconds on a CPU): DDU-Net(2,8,Y) with base 4.
TINY = {"ARCH": 1, "BASE_CHANNELS": 4, "EPOCHS": 2, "PATCH_SIZE": 32,
        "SUBIMAGES": 2, "BATCH_SIZE": 2, "LEARNING_RATE": 0.03}
#: The label layer's categories: what the checkpoint's classes must be named and coloured.
CATEGORIES = [("forest", "Forest", (20, 140, 40)), ("urban", "Urban", (220, 30, 30))]


@pytest.fixture(scope="module")
def scene(tmp_path_factory, qgis_app) -> dict:
    """A 3 x 96 x 96 uint8 GeoTIFF (left half green, right half red, with noise), a label
    raster of the same grid (0 forest, 1 urban, 255 nodata) and polygon labels."""
    import numpy as np
    from osgeo import gdal, osr

    folder = tmp_path_factory.mktemp("train-data")
    rng = np.random.default_rng(1)
    image = folder / "scene.tif"
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(EPSG)
    transform = (X0, PIXEL, 0.0, Y0, 0.0, -PIXEL)
    ds = gdal.GetDriverByName("GTiff").Create(str(image), SIZE, SIZE, 3, gdal.GDT_Byte)
    ds.SetGeoTransform(transform)
    ds.SetProjection(srs.ExportToWkt())
    half = SIZE // 2
    for band, (left, right) in enumerate(((30, 200), (140, 50), (40, 40)), 1):
        values = np.empty((SIZE, SIZE), np.int64)
        values[:, :half], values[:, half:] = left, right
        values += rng.integers(-15, 16, (SIZE, SIZE))
        ds.GetRasterBand(band).WriteArray(values.clip(0, 255).astype(np.uint8))
    ds = None

    labels = folder / "labels.tif"
    ds = gdal.GetDriverByName("GTiff").Create(str(labels), SIZE, SIZE, 1, gdal.GDT_Byte)
    ds.SetGeoTransform(transform)
    ds.SetProjection(srs.ExportToWkt())
    values = np.full((SIZE, SIZE), 255, np.uint8)
    values[4:92, 4:44], values[4:92, 52:92] = 0, 1
    band = ds.GetRasterBand(1)
    band.WriteArray(values)
    band.SetNoDataValue(255)
    ds = None
    return {"image": str(image), "label_raster": str(labels), "folder": folder}


def _polygons():
    """Four labelled polygons (two per half) in a memory layer styled by category."""
    from qgis.core import (
        QgsCategorizedSymbolRenderer,
        QgsFeature,
        QgsField,
        QgsFillSymbol,
        QgsGeometry,
        QgsRectangle,
        QgsRendererCategory,
        QgsVectorLayer,
    )
    from qgis.PyQt.QtCore import QVariant

    layer = QgsVectorLayer(f"Polygon?crs=EPSG:{EPSG}", "labels", "memory")
    layer.dataProvider().addAttributes([QgsField("lc", QVariant.String)])
    layer.updateFields()

    def box(col0, row0, col1, row1, value):
        feature = QgsFeature(layer.fields())
        feature.setGeometry(QgsGeometry.fromRect(QgsRectangle(
            X0 + col0 * PIXEL, Y0 - row1 * PIXEL, X0 + col1 * PIXEL, Y0 - row0 * PIXEL)))
        feature.setAttributes([value])
        return feature

    unlabelled = QgsFeature(layer.fields())  # no class: left out of the training data
    unlabelled.setGeometry(QgsGeometry.fromRect(QgsRectangle(X0, Y0 - 50, X0 + 50, Y0)))
    layer.dataProvider().addFeatures([
        box(2, 2, 44, 46, "forest"), box(2, 50, 44, 94, "forest"),
        box(52, 2, 94, 46, "urban"), box(52, 50, 94, 94, "urban"), unlabelled])
    categories = [QgsRendererCategory(value, QgsFillSymbol.createSimple(
        {"color": "{},{},{},255".format(*color)}), label) for value, label, color in CATEGORIES]
    layer.setRenderer(QgsCategorizedSymbolRenderer("lc", categories))
    return layer


def _segment(image, model, dst, feedback):
    import processing

    return processing.run("geoddu:segment", {"INPUT": image, "MODEL": model, "OUTPUT": dst},
                          feedback=feedback)


def _class_map(path):
    from osgeo import gdal

    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    table = band.GetColorTable()
    info = {"values": band.ReadAsArray(), "names": json.loads(ds.GetMetadataItem("CLASS_NAMES")),
            "colors": [list(table.GetColorEntry(i)[:3]) for i in range(2)]}
    ds = None
    return info


def test_train_then_segment(plugin, scene, mode, feedback_cls, tmp_path):
    import processing

    feedback = feedback_cls()
    ckpt = str(tmp_path / "out" / "model.pt")  # its folder is made
    labels = _polygons()
    result = processing.run("geoddu:train", {
        "INPUTS": [scene["image"]], "LABELS": labels, "CLASS_FIELD": "lc", **TINY,
        "PRECISION": "bf16", "OUTPUT": ckpt}, feedback=feedback)

    run_dir = str(tmp_path / "out" / "model_run")
    assert result["OUTPUT"] == ckpt and os.path.isfile(ckpt)
    assert result["RUN_FOLDER"] == run_dir
    assert result["ENGINE"] == mode
    assert result["EPOCHS_RUN"] == 2 and result["BEST_EPOCH"] in (1, 2)
    assert 0.0 <= result["BEST_VAL_MIOU"] <= 1.0
    for name in ("best.pt", "last.pt", "history.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    with open(os.path.join(run_dir, "best.pt"), "rb") as a, open(ckpt, "rb") as b:
        assert a.read() == b.read()  # the run's best.pt, copied
    assert not [n for n in os.listdir(tmp_path / "out") if "geoddu-tmp" in n]
    staged = json.loads((tmp_path / "out" / "model_run" / "training-data" /
                         "classes.json").read_text())
    assert staged["classes"] == [{"name": label, "value": value, "color": list(color)}
                                 for value, label, color in CATEGORIES]

    # Progress: where and how it trains (PRECISION reached the engine), epoch lines with loss
    # and validation mIoU, a bar that ends at 100.
    assert "training on cpu in bf16" in feedback.messages
    epochs = [m for m in feedback.messages if m.startswith("epoch ")]
    assert [m.split(":")[0] for m in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("train loss" in m and "val mIoU" in m for m in epochs)
    values = feedback.progress_values
    assert values and values == sorted(values) and values[-1] == pytest.approx(100)
    # The new checkpoint's model card, as `geoddu card --text` shows it: training filled it.
    card = feedback.messages[feedback.messages.index(f"Model card of {ckpt}"):]
    assert any(m.startswith("  metrics: ") and "val_miou=" in m for m in card), card[:5]

    # The checkpoint segments: a class map with the label layer's class names and colours,
    # the green half mostly forest and the red half mostly urban.
    dst = str(tmp_path / "classes.tif")
    _segment(scene["image"], ckpt, dst, feedback_cls())
    out = _class_map(dst)
    assert out["names"] == [label for _, label, _ in CATEGORIES]
    assert out["colors"] == [list(color) for _, _, color in CATEGORIES]
    values = out["values"]
    assert set(values.ravel().tolist()) <= {0, 1}
    half = SIZE // 2
    forest, urban = (values[:, :half] == 0).mean(), (values[:, half:] == 1).mean()
    assert forest > 0.5 and urban > 0.5, (forest, urban)
    del labels


def test_label_raster_in_a_model_chained_to_segment(plugin, scene, engine_mode, python_env,
                                                     tmp_path):
    """Train (labels from a raster) and segment with the trained checkpoint, as two steps
    of one Processing model: what the graphical modeler builds."""
    import processing
    from qgis.core import (
        QgsProcessingModelAlgorithm,
        QgsProcessingModelChildParameterSource,
        QgsProcessingModelParameter,
        QgsProcessingParameterRasterLayer,
    )

    source = QgsProcessingModelChildParameterSource
    engine_mode("env", python_env)
    model = QgsProcessingModelAlgorithm("train and segment", "tests")
    for name in ("scene", "labels"):
        model.addModelParameter(QgsProcessingParameterRasterLayer(name, name),
                                QgsProcessingModelParameter(name))
    model_step(model, "geoddu:train", "train",
               {"INPUTS": source.fromModelParameter("scene"),
                "LABEL_RASTER": source.fromModelParameter("labels"),
                **{name: source.fromStaticValue(value) for name, value in TINY.items()}})
    model_step(model, "geoddu:segment", "segment",
               {"INPUT": source.fromModelParameter("scene"),
                "MODEL": source.fromChildOutput("train", "OUTPUT")},
               {"OUTPUT": ("landcover", "Land cover")})

    dst = str(tmp_path / "landcover.tif")
    result = processing.run(model, {"scene": scene["image"], "labels": scene["label_raster"],
                                    "segment:landcover": dst})
    assert result["segment:landcover"] == dst
    out = _class_map(dst)
    assert out["names"] == ["class 0", "class 1"]  # the label raster has no category names
    assert set(out["values"].ravel().tolist()) <= {0, 1}


def test_cancel_keeps_a_resumable_run_and_resume_finishes_it(plugin, scene, engine_mode,
                                                             python_env, feedback_cls,
                                                             tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    engine_mode("env", python_env)
    ckpt, run_dir = str(tmp_path / "model.pt"), str(tmp_path / "run")
    params = {"INPUTS": [scene["image"]], "LABEL_RASTER": scene["label_raster"], **TINY,
              "EPOCHS": 3, "RUN_FOLDER": run_dir, "OUTPUT": ckpt}
    feedback = feedback_cls(cancel_at=r"^epoch 1/3")
    with pytest.raises(QgsProcessingException, match="cancelled after epoch 1") as info:
        processing.run("geoddu:train", params, feedback=feedback)
    assert "\n" not in str(info.value).strip() and "last.pt" in str(info.value)
    assert "training on cpu in fp32" in feedback.messages  # PRECISION auto on the CPU
    assert not os.path.exists(ckpt)  # no checkpoint, not even a partial one
    assert sorted(os.listdir(tmp_path)) == ["run"]
    assert {"last.pt", "best.pt", "history.json"} <= set(os.listdir(run_dir))
    with open(os.path.join(run_dir, "history.json")) as stream:
        assert [row["epoch"] for row in json.load(stream)] == [1]

    feedback = feedback_cls()
    result = processing.run("geoddu:train", {**params, "RESUME": True}, feedback=feedback)
    assert result["EPOCHS_RUN"] == 3 and os.path.isfile(ckpt)
    assert [m.split(":")[0] for m in feedback.messages if m.startswith("epoch ")] == [
        "epoch 2/3", "epoch 3/3"]


def test_bad_input_is_one_line_and_leaves_nothing(plugin, scene, engine_mode, geoddu_cli,
                                                  feedback_cls, tmp_path):
    import processing
    from qgis.core import QgsProcessingException

    engine_mode("cli")
    base = {"INPUTS": [scene["image"]], **TINY, "OUTPUT": str(tmp_path / "x" / "model.pt")}
    with pytest.raises(QgsProcessingException, match="polygons .* or as a label raster"):
        processing.run("geoddu:train", base, feedback=feedback_cls())
    # A patch larger than the image: one patch, no validation split; the engine says so.
    with pytest.raises(QgsProcessingException) as info:
        processing.run("geoddu:train", {**base, "LABEL_RASTER": scene["label_raster"],
                                        "PATCH_SIZE": 512}, feedback=feedback_cls())
    assert "\n" not in str(info.value).strip() and "split is empty" in str(info.value)
    assert os.listdir(tmp_path) == []  # no run folder, no staged data, no output folder


def test_every_algorithm_documents_its_parameters(plugin):
    """A group, a help URL into the repository metadata.txt names, and a plain-text help
    (what qgis_process help prints) that names every parameter."""
    from qgis.core import QgsApplication

    meta = configparser.ConfigParser()
    meta.read(PLUGIN_PARENT / "geoddu_qgis" / "metadata.txt")
    repository = meta["general"]["repository"]
    provider = QgsApplication.processingRegistry().providerById("geoddu")
    ids = sorted(a.id() for a in provider.algorithms())
    assert ids == ["geoddu:assess", "geoddu:modelcard", "geoddu:sample", "geoddu:segment",
                   "geoddu:train", "geoddu:vectorize"]
    for alg in provider.algorithms():
        assert alg.group() == "DDU-Net" and alg.groupId() == "ddunet"
        assert alg.helpUrl().startswith(repository + "/blob/main/docs/qgis.md#")
        text = alg.shortHelpString()
        assert "<" not in text, alg.id()
        for param in alg.parameterDefinitions():
            assert f"({param.name()}" in text, (alg.id(), param.name())


def test_qgis_process_trains_and_prints_plain_help(plugin, scene, python_env, tmp_path):
    exe = shutil.which("qgis_process.bin") or "/usr/bin/qgis_process.bin"
    if not os.path.exists(exe):
        missing("qgis_process.bin not found (Debian package qgis)")
    from geoddu_qgis.discovery import env_site_packages

    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GEODDU_") and k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(
        entry for entry in env.get("PATH", "").split(os.pathsep)
        if entry and not os.path.isfile(os.path.join(entry, os.pardir, "pyvenv.cfg")))
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env.update(HOME=str(home), QGIS_PLUGINPATH=str(PLUGIN_PARENT), QT_QPA_PLATFORM="offscreen",
               XDG_RUNTIME_DIR=str(home), GEODDU_ENGINE="import",
               PYTHONPATH=env_site_packages(python_env) or "")

    def qgis_process(*args):
        return subprocess.run([exe, *args], env=env, capture_output=True, text=True,
                              timeout=300)

    done = qgis_process("plugins", "enable", "geoddu_qgis")
    assert done.returncode == 0, done.stdout + done.stderr
    done = qgis_process("help", "geoddu:train")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Class field (CLASS_FIELD)" in done.stdout and "<b>" not in done.stdout

    ckpt = str(tmp_path / "qp-model.pt")
    params = {**TINY, "EPOCHS": 1, "INPUTS": scene["image"],
              "LABEL_RASTER": scene["label_raster"], "OUTPUT": ckpt}
    args = ["--json", "run", "geoddu:train", "--", *(f"{k}={v}" for k, v in params.items())]
    done = qgis_process(*args)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(done.stdout[done.stdout.index("{"):])["results"]
    assert results["OUTPUT"] == ckpt and results["ENGINE"] == "import"
    assert results["EPOCHS_RUN"] == 1 and os.path.isfile(ckpt)


# --- the bridge alone: one training request, both routes ---------------------------------------


def _bridge():
    if str(PLUGIN_PARENT) not in sys.path:
        sys.path.insert(0, str(PLUGIN_PARENT))
    from geoddu_qgis import discovery, engine_bridge

    return engine_bridge, discovery


@pytest.fixture(scope="module")
def synthetic(geoddu_cli, tmp_path_factory) -> str:
    data = tmp_path_factory.mktemp("synthetic") / "k2"
    subprocess.run([geoddu_cli, "synth", "-q", "-o", str(data), "--k", "2", "--train", "12",
                    "--val", "6", "--test", "0"], check=True)
    return str(data)


def _train(engine, request):
    progress, rows = [], []
    summary = engine.train(request, progress=lambda *report: progress.append(report),
                           epoch=rows.append)
    return progress, rows, summary


def test_the_bridge_sends_one_request_and_reads_the_same_events_both_ways(
        qgis_app, synthetic, geoddu_cli, python_env, tmp_path):
    """The command gets the training request as JSON on stdin (fixed arguments, no path on
    its command line) and reports through JSON events; geoddu in-process runs the same request
    with the same events: the same progress, epochs and weights."""
    engine_bridge, discovery = _bridge()
    script, record = recording_command(tmp_path, geoddu_cli)
    request = {"dataset": "synthetic", "data": synthetic, "arch": "DDU-Net(2,8,Y)",
               "base_channels": 4, "epochs": 2, "batch_size": 6, "seed": 3}
    runs = {}
    for route, engine in (
            ("cli", engine_bridge.CliEngine([script])),
            ("in-process", discovery.find_engine(mode="env", python_env=python_env,
                                                 environ={}))):
        run_dir = str(tmp_path / f"-o {route};$x")
        runs[route] = _train(engine, {**request, "run_dir": run_dir})
        progress, rows, summary = runs[route]
        assert progress[0] == ("train", 0, 4) and progress[-1] == ("train", 4, 4)
        assert [done for _, done, _ in progress] == sorted(done for _, done, _ in progress)
        assert [(row["epoch"], row["epochs"]) for row in rows] == [(1, 2), (2, 2)]
        with open(os.path.join(run_dir, "history.json")) as stream:
            history = json.load(stream)
        assert [row["val_loss"] for row in rows] == [row["val_loss"] for row in history]
        assert summary["epochs_run"] == 2 and os.path.isfile(summary["best"])
    assert (record / "argv").read_text().splitlines() == [
        "train", "--request", "-", "--progress=json"]
    sent = json.loads((record / "stdin.json").read_text())
    assert sent == {**request, "run_dir": str(tmp_path / "-o cli;$x")}
    # The same progress and epochs (two Pythons with their own numpy: equal to rounding).
    (cli_progress, cli_rows, _), (own_progress, own_rows, _) = runs["cli"], runs["in-process"]
    assert cli_progress == own_progress
    for mine, theirs in zip(cli_rows, own_rows, strict=True):
        assert mine == {**theirs, **{key: pytest.approx(theirs[key], rel=1e-4)
                                     for key in ("train_loss", "val_loss", "val_miou")}}


def test_bridge_training_errors_are_one_line(qgis_app, python_env, geoddu_cli, tmp_path):
    engine_bridge, discovery = _bridge()
    old = tmp_path / "old geoddu"  # a geoddu from before `geoddu train --request`
    old.write_text("#!/bin/sh\necho \"Error: No such option: --request (see 'geoddu train "
                   "--help')\" >&2\nexit 2\n")
    old.chmod(0o755)
    bad = {"run_dir": str(tmp_path / "run"), "dataset": "folder", "data": str(tmp_path),
           "colour": "red"}
    engines = {"cli": engine_bridge.CliEngine([geoddu_cli]),
               "in-process": discovery.find_engine(mode="env", python_env=python_env,
                                                   environ={}),
               "old": engine_bridge.CliEngine([str(old)])}
    for route, engine in engines.items():
        with pytest.raises(engine_bridge.EngineError) as info:
            engine.train(bad)
        want = (engine_bridge.TOO_OLD["train"] if route == "old"
                else "request: unknown field(s) colour")
        assert str(info.value) == want, route
    assert os.listdir(tmp_path) == ["old geoddu"]

