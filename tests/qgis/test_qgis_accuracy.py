"""Create accuracy sample, Assess accuracy and Model card in a real QGIS, through both engine
set-ups: a class map and a truth raster written here with rasterio, points drawn, labelled in
QGIS from the truth, assessed; every figure compared with what geoddu.accuracy gives for the
same inputs, and every card with what `geoddu card --text` prints."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess

import pytest
from qgis_testdata import EPSG, missing

NAMES = ["water", "forest", "urban"]
H, W = 60, 80
PIXEL, X0, Y0 = 10.0, 500000.0, 4600000.0
# The fields `geoddu sample` writes, in order (geoddu.accuracy.sampling.FIELDS).
FIELDS = ["point_id", "map_class", "map_class_name", "stratum_pixels", "stratum_weight", "row",
          "col", "reference"]

# Run by the engine's own Python (QGIS's has no rasterio): a class map, water on the left,
# forest on the right, a small urban block, a nodata corner; and the truth, the map with every
# sixth pixel of a diagonal pattern in the next class.
MAKE_MAPS = r"""
import json, sys
import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

args = json.loads(sys.argv[1])
h, w = args["h"], args["w"]
rows, cols = np.mgrid[0:h, 0:w]
classes = np.zeros((h, w), np.uint8)
classes[:, 30:] = 1
classes[40:, 60:] = 2
classes[:6, :10] = 255
truth = classes.copy()
wrong = ((rows * 7 + cols * 3) % 6 == 0) & (classes != 255)
truth[wrong] = (classes[wrong] + 1) % 3
profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", nodata=255,
               crs=CRS.from_epsg(args["epsg"]),
               transform=from_origin(args["x0"], args["y0"], args["pixel"], args["pixel"]))
for name, values in (("map.tif", classes), ("truth.tif", truth)):
    with rasterio.open(f"{args['folder']}/{name}", "w", **profile) as ds:
        ds.write(values, 1)
        ds.update_tags(CLASS_NAMES=json.dumps(args["names"]))
"""

# geoddu.accuracy called directly, in the engine's Python: what the algorithm must reproduce.
ASSESS_DIRECTLY = r"""
import json, sys
from geoddu.accuracy.assess import assess
from geoddu.accuracy.report import to_json
args = json.loads(sys.argv[1])
print(to_json(assess(args["map"], args["reference"], class_column=args["column"],
                     design=args["design"])))
"""


@pytest.fixture(scope="module")
def engine_python(geoddu_cli) -> str:
    """The Python of the geoddu command (it has rasterio and geoddu; QGIS's has neither)."""
    python = os.path.join(os.path.dirname(geoddu_cli), "python")
    if not os.path.isfile(python):
        missing(f"no Python beside {geoddu_cli}")
    return python


def _python(engine_python: str, code: str, *args: str) -> str:
    done = subprocess.run([engine_python, "-c", code, *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def maps(tmp_path_factory, engine_python, qgis_app) -> dict:
    folder = tmp_path_factory.mktemp("accuracy")
    _python(engine_python, MAKE_MAPS, json.dumps(
        {"folder": str(folder), "h": H, "w": W, "epsg": EPSG, "x0": X0, "y0": Y0,
         "pixel": PIXEL, "names": NAMES}))
    return {"map": str(folder / "map.tif"), "truth": str(folder / "truth.tif")}


def _values(path: str):
    from osgeo import gdal

    ds = gdal.Open(path)
    values = ds.GetRasterBand(1).ReadAsArray()
    ds = None
    return values


def _points(path: str) -> tuple[list[str], list[dict], int]:
    """(field names, one dict per point with its x and y, the type of `reference`)."""
    from osgeo import ogr

    ds = ogr.Open(path)
    layer = ds.GetLayer(0)
    defn = layer.GetLayerDefn()
    fields = [defn.GetFieldDefn(i).GetName() for i in range(defn.GetFieldCount())]
    rows = []
    for feature in layer:
        point = feature.GetGeometryRef()
        rows.append({**{name: feature.GetField(name) for name in fields},
                     "x": point.GetX(), "y": point.GetY()})
    reference_type = defn.GetFieldDefn(defn.GetFieldIndex("reference")).GetType()
    ds = None
    return fields, rows, reference_type


def _pixels(rows: list[dict]) -> list[tuple[int, int, int]]:
    return [(p["map_class"], p["row"], p["col"]) for p in rows]


def _sample(params: dict, feedback) -> dict:
    import processing

    return processing.run("geoddu:sample", params, feedback=feedback)


def _close(mine, theirs, where: str = "") -> None:
    """Equal, floats to 1e-9 (two Pythons, two numpys: the same arithmetic)."""
    if isinstance(theirs, dict):
        assert isinstance(mine, dict) and sorted(mine) == sorted(theirs), where
        for key in theirs:
            _close(mine[key], theirs[key], f"{where}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(mine, list) and len(mine) == len(theirs), where
        for i, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(theirs, float):
        assert mine == pytest.approx(theirs, rel=1e-9, abs=1e-12), where
    else:
        assert mine == theirs, where


# --- Create accuracy sample -----------------------------------------------------------------


def test_sample_is_the_engines_and_reproducible(plugin, maps, mode, feedback_cls, geoddu_cli,
                                                tmp_path):
    from osgeo import ogr

    dst = str(tmp_path / "made" / "points.gpkg")  # its folder is made
    feedback = feedback_cls()
    params = {"INPUT": maps["map"], "POINTS": 60, "MIN_PER_CLASS": 10, "SEED": 7, "OUTPUT": dst}
    result = _sample(params, feedback)
    assert result["OUTPUT"] == dst and result["ENGINE"] == mode
    assert result["POINT_COUNT"] == 60 and result["SEED_USED"] == 7

    fields, points, reference_type = _points(dst)
    assert fields == FIELDS
    assert reference_type == ogr.OFTString
    assert len(points) == 60
    assert [p["point_id"] for p in points] == list(range(1, 61))
    assert all(p["reference"] is None for p in points)  # empty, to be labelled
    values = _values(maps["map"])
    valid = int((values != 255).sum())
    per_class = {c: int((values == c).sum()) for c in range(3)}
    assert len({(p["row"], p["col"]) for p in points}) == 60  # no pixel twice
    for p in points:
        row, col = p["row"], p["col"]
        assert values[row, col] == p["map_class"] != 255  # on a valid pixel of its class
        assert p["map_class_name"] == NAMES[p["map_class"]]
        assert p["stratum_pixels"] == per_class[p["map_class"]]
        assert p["stratum_weight"] == pytest.approx(per_class[p["map_class"]] / valid)
        assert (p["x"], p["y"]) == pytest.approx((X0 + (col + 0.5) * PIXEL,
                                                  Y0 - (row + 0.5) * PIXEL))
    drawn = {c: sum(p["map_class"] == c for p in points) for c in range(3)}
    assert min(drawn.values()) >= 10  # MIN_PER_CLASS reached the engine
    assert drawn[0] + drawn[1] > drawn[2]
    assert any(m.startswith("Sample: 60 points in 3 strata") and "seed 7" in m
               for m in feedback.messages)
    assert any(m.startswith("  class 2 urban: 400 pixels") for m in feedback.messages)

    # The same seed draws the same points, another seed others; and `geoddu sample` with the
    # same options draws exactly these: one implementation.
    again = str(tmp_path / "again.geojson")
    _sample({**params, "OUTPUT": again}, feedback_cls())
    assert _pixels(_points(again)[1]) == _pixels(points)
    other = str(tmp_path / "other.gpkg")
    _sample({**params, "SEED": 8, "OUTPUT": other}, feedback_cls())
    assert _pixels(_points(other)[1]) != _pixels(points)
    cli = str(tmp_path / "cli.gpkg")
    subprocess.run([geoddu_cli, "sample", maps["map"], "-o", cli, "--n", "60",
                    "--min-per-class", "10", "--seed", "7", "--quiet"], check=True,
                   capture_output=True)
    assert _points(cli)[1] == [{k: v for k, v in p.items()} for p in points]


def test_sample_size_from_expected_accuracies_and_a_drawn_seed(plugin, maps, mode, feedback_cls,
                                                               tmp_path):
    feedback = feedback_cls()
    first = str(tmp_path / "olofsson.gpkg")
    params = {"INPUT": maps["map"], "EXPECTED_UA": "0.8,urban=0.6", "TARGET_SE": 0.05,
              "OUTPUT": first}
    result = _sample(params, feedback)  # no SEED: one is drawn and returned
    # Cochran / Olofsson: n = (sum W_i sqrt(U_i (1 - U_i)) / SE)^2, rounded up.
    values = _values(maps["map"])
    valid = (values != 255).sum()
    spread = sum((values == c).sum() / valid * math.sqrt(u * (1 - u))
                 for c, u in ((0, 0.8), (1, 0.8), (2, 0.6)))
    n = math.ceil((spread / 0.05) ** 2 - 1e-9)
    assert result["POINT_COUNT"] == n == len(_points(first)[1])
    seed = result["SEED_USED"]
    assert isinstance(seed, int) and seed >= 0
    assert any(f"Olofsson's sample size for SE(OA) 0.05: n = {n}" in m and f"seed {seed}" in m
               for m in feedback.messages)
    assert any("expected user's accuracy 0.6" in m for m in feedback.messages)
    second = str(tmp_path / "again.gpkg")
    _sample({**params, "SEED": seed, "OUTPUT": second}, feedback_cls())
    assert _pixels(_points(second)[1]) == _pixels(_points(first)[1])


def test_sample_refusals_are_one_line_and_leave_nothing(plugin, maps, mode, feedback_cls,
                                                        tmp_path):
    from qgis.core import QgsProcessingException

    out = str(tmp_path / "x" / "points.gpkg")
    with pytest.raises(QgsProcessingException, match="one of the two"):
        _sample({"INPUT": maps["map"], "OUTPUT": out}, feedback_cls())
    with pytest.raises(QgsProcessingException, match="one of the two"):
        _sample({"INPUT": maps["map"], "POINTS": 5, "EXPECTED_UA": "0.8", "OUTPUT": out},
                feedback_cls())
    with pytest.raises(QgsProcessingException) as info:  # the engine's parser says why
        _sample({"INPUT": maps["map"], "EXPECTED_UA": "0.8,sand=0.9", "OUTPUT": out},
                feedback_cls())
    assert "'sand'" in str(info.value) and "\n" not in str(info.value).strip()
    with pytest.raises(QgsProcessingException, match="cancel"):
        _sample({"INPUT": maps["map"], "POINTS": 50, "OUTPUT": out},
                feedback_cls(cancel_at="geoddu:"))
    assert os.listdir(tmp_path) == []  # no output, no folder made for it


# --- label, then Assess accuracy ------------------------------------------------------------


def _labelled_points(folder, maps, feedback_cls) -> tuple[str, list[tuple[int, int]]]:
    """A sample whose `reference` is filled in QGIS, as a person would (by name, some in
    capitals, some by class id), from the truth raster; points 1 and 2 left empty. Returns
    the layer's path and the (map class, true class) of each labelled point."""
    from qgis.core import QgsVectorLayer

    path = str(folder / "labelled.gpkg")
    _sample({"INPUT": maps["map"], "POINTS": 90, "MIN_PER_CLASS": 15, "SEED": 3,
             "OUTPUT": path}, feedback_cls())
    truth = _values(maps["truth"])
    layer = QgsVectorLayer(path, "labelled", "ogr")
    assert layer.isValid()
    index = layer.fields().indexOf("reference")
    pairs = []
    assert layer.startEditing()
    for feature in layer.getFeatures():
        if feature["point_id"] in (1, 2):
            continue
        true = int(truth[feature["row"], feature["col"]])
        label = NAMES[true]
        if feature["point_id"] % 4 == 0:
            label = label.upper()
        elif feature["point_id"] % 5 == 0:
            label = str(true)
        assert layer.changeAttributeValue(feature.id(), index, label)
        pairs.append((feature["map_class"], true))
    assert layer.commitChanges()
    del layer
    return path, pairs


@pytest.fixture(scope="module")
def labelled(maps, tmp_path_factory, plugin, geoddu_cli):
    """One labelled sample for the module's assessments, drawn through the `cli` set-up (the
    tests' own set-up is chosen per test, after module fixtures)."""
    from qgis_testdata import recording_feedback

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GEODDU_ENGINE", "cli")
        patch.setenv("GEODDU_CLI", geoddu_cli)
        return _labelled_points(tmp_path_factory.mktemp("labelled"), maps,
                                recording_feedback())


def test_assess_labelled_points_equals_the_engine(plugin, maps, labelled, mode, feedback_cls,
                                                  engine_python, tmp_path):
    import processing
    from qgis.core import QgsApplication, QgsProcessingOutputHtml, QgsVectorLayer

    alg = QgsApplication.processingRegistry().algorithmById("geoddu:assess")
    assert isinstance(alg.outputDefinition("OUTPUT"), QgsProcessingOutputHtml)  # Results Viewer

    points, pairs = labelled
    layer = QgsVectorLayer(points, "labelled", "ogr")  # a layer, as the dialog passes it
    report = str(tmp_path / "out" / "report.html")
    figures, table = str(tmp_path / "out" / "figures.json"), str(tmp_path / "out" / "f.csv")
    feedback = feedback_cls()
    result = processing.run("geoddu:assess", {
        "INPUT": maps["map"], "REFERENCE": layer, "CLASS_FIELD": "reference",
        "DESIGN": "stratified", "OUTPUT": report, "JSON": figures, "CSV": table},
        feedback=feedback)
    del layer
    assert result["ENGINE"] == mode
    assert (result["OUTPUT"], result["JSON"], result["CSV"]) == (report, figures, table)
    page = open(report, encoding="utf-8").read()
    assert page.startswith("<!DOCTYPE html>") and "Overall accuracy" in page
    assert open(table, encoding="utf-8").readline().startswith("metric,class,reference_class")
    mine = json.loads(open(figures, encoding="utf-8").read())

    # The labels as counted here: the sample error matrix is theirs, the 2 empty points are
    # left out and said so.
    counts = [[0] * 3 for _ in range(3)]
    for mapped, true in pairs:
        counts[mapped][true] += 1
    assert mine["sample_counts"] == counts
    assert mine["used"] == len(pairs) == 88
    assert mine["skipped"] == {"no reference class": 2}
    assert mine["classes"] == NAMES

    # Every figure equals geoddu.accuracy's for the same inputs.
    theirs = json.loads(_python(engine_python, ASSESS_DIRECTLY, json.dumps(
        {"map": maps["map"], "reference": points, "column": "reference",
         "design": "stratified"})))
    _close({k: v for k, v in mine.items() if k != "reference"},
           {k: v for k, v in theirs.items() if k != "reference"})
    assert os.path.realpath(mine["reference"]) == os.path.realpath(points)

    overall = theirs["overall_accuracy"]
    assert 0.5 < overall["estimate"] < 1.0 and overall["ci"] > 0
    assert result["OVERALL_ACCURACY"] == pytest.approx(overall["estimate"])
    assert result["OVERALL_ACCURACY_CI"] == pytest.approx(overall["ci"])
    low, high = overall["estimate"] - overall["ci"], overall["estimate"] + overall["ci"]
    line = (f"Overall accuracy {overall['estimate']:.4f} ± {overall['ci']:.4f} "
            f"(95% interval {low:.4f} to {high:.4f}) from 88 points (stratified design)")
    assert line in feedback.messages
    assert any(m.startswith("  urban: user's accuracy ") for m in feedback.messages)
    assert "Note: left out: 2 no reference class" in feedback.messages


def test_assess_simple_design_and_a_reference_raster(plugin, maps, labelled, mode, feedback_cls,
                                                     engine_python, tmp_path):
    import processing

    points, _ = labelled
    simple = str(tmp_path / "simple.json")
    processing.run("geoddu:assess", {
        "INPUT": maps["map"], "REFERENCE": points, "DESIGN": "simple",  # CLASS_FIELD: default
        "OUTPUT": str(tmp_path / "simple.html"), "JSON": simple}, feedback=feedback_cls())
    mine = json.loads(open(simple, encoding="utf-8").read())
    assert mine["design"] == "simple"
    theirs = json.loads(_python(engine_python, ASSESS_DIRECTLY, json.dumps(
        {"map": maps["map"], "reference": points, "column": "reference", "design": "simple"})))
    _close({k: v for k, v in mine.items() if k != "reference"},
           {k: v for k, v in theirs.items() if k != "reference"})

    # A reference raster on the map's grid: every valid pixel is a unit; no JSON asked for,
    # the figures still come back (the outputs).
    feedback = feedback_cls()
    report = str(tmp_path / "raster.html")
    result = processing.run("geoddu:assess", {
        "INPUT": maps["map"], "REFERENCE_RASTER": maps["truth"], "OUTPUT": report},
        feedback=feedback)
    assert os.path.isfile(report) and "JSON" not in result
    theirs = json.loads(_python(engine_python, ASSESS_DIRECTLY, json.dumps(
        {"map": maps["map"], "reference": maps["truth"], "column": None,
         "design": "stratified"})))
    values, truth = _values(maps["map"]), _values(maps["truth"])
    assert theirs["used"] == int((values != 255).sum())
    agree = float(((values == truth) & (values != 255)).sum() / (values != 255).sum())
    # Every pixel sampled: the estimate is the map's agreement with the truth, to rounding.
    assert theirs["overall_accuracy"]["estimate"] == pytest.approx(agree)
    assert result["OVERALL_ACCURACY"] == pytest.approx(theirs["overall_accuracy"]["estimate"])
    assert result["OVERALL_ACCURACY_CI"] == pytest.approx(theirs["overall_accuracy"]["ci"])
    assert any(m.startswith("Overall accuracy ") and "pixels" in m for m in feedback.messages)


def test_assess_refusals_are_one_line_and_leave_nothing(plugin, maps, labelled, mode,
                                                        feedback_cls, tmp_path):
    import processing
    from qgis.core import QgsProcessingException, QgsProject, QgsVectorLayer

    points, _ = labelled
    out = {"OUTPUT": str(tmp_path / "x" / "report.html"),
           "JSON": str(tmp_path / "x" / "figures.json")}
    with pytest.raises(QgsProcessingException, match="one of the two"):
        processing.run("geoddu:assess", {"INPUT": maps["map"], **out}, feedback=feedback_cls())
    with pytest.raises(QgsProcessingException, match="one of the two"):
        processing.run("geoddu:assess", {"INPUT": maps["map"], "REFERENCE": points,
                                         "REFERENCE_RASTER": maps["truth"], **out},
                       feedback=feedback_cls())
    with pytest.raises(QgsProcessingException, match="has no field 'label'"):
        processing.run("geoddu:assess", {"INPUT": maps["map"], "REFERENCE": points,
                                         "CLASS_FIELD": "label", **out},
                       feedback=feedback_cls())
    # Labels typed but not saved: the engine reads the file, so the run refuses to go on.
    # (The layer is the project's, as in QGIS: a Python-owned layer that a failed run saw
    # outlives QGIS and crashes the interpreter at exit.)
    project = QgsProject.instance()
    layer = QgsVectorLayer(points, "labelled", "ogr")
    project.addMapLayer(layer)
    assert layer.startEditing()
    feature = next(layer.getFeatures())
    layer.changeAttributeValue(feature.id(), layer.fields().indexOf("reference"), "urban")
    with pytest.raises(QgsProcessingException, match="unsaved edits"):
        processing.run("geoddu:assess", {"INPUT": maps["map"], "REFERENCE": layer, **out},
                       feedback=feedback_cls())
    assert layer.rollBack()
    project.removeMapLayer(layer.id())
    del layer, feature
    # The engine's refusal (no usable unit: no weight is a class) is its one line.
    with pytest.raises(QgsProcessingException) as info:
        processing.run("geoddu:assess", {"INPUT": maps["map"], "REFERENCE": points,
                                         "CLASS_FIELD": "stratum_weight", **out},
                       feedback=feedback_cls())
    assert "no usable reference unit" in str(info.value)
    assert "\n" not in str(info.value).strip()
    assert os.listdir(tmp_path) == []  # no report, no JSON, no folder made for them


# --- model cards ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def carded(data, geoddu_cli, tmp_path_factory) -> str:
    """A checkpoint (geoddu init) with a card, set with `geoddu card --set`."""
    path = str(tmp_path_factory.mktemp("card") / "carded.pt")
    shutil.copyfile(data["model"], path)
    subprocess.run([geoddu_cli, "card", "-m", path, "--set",
                    "description=Water & forest <test> model", "--set", "license=CC-BY-4.0",
                    "--set", "authors=A. Doe; B. Roe"], check=True, capture_output=True)
    return path


def _card_text(geoddu_cli: str, model: str) -> str:
    done = subprocess.run([geoddu_cli, "card", "-m", model, "--text"], check=True,
                          capture_output=True, text=True)
    return done.stdout.strip()


def test_model_card_algorithm_shows_the_engines_card(plugin, data, carded, mode, feedback_cls,
                                                     geoddu_cli, tmp_path):
    import processing
    from qgis.core import QgsApplication, QgsProcessingException, QgsProcessingOutputHtml

    alg = QgsApplication.processingRegistry().algorithmById("geoddu:modelcard")
    assert isinstance(alg.outputDefinition("OUTPUT"), QgsProcessingOutputHtml)

    html = str(tmp_path / "cards" / "card.html")
    feedback = feedback_cls()
    result = processing.run("geoddu:modelcard", {"MODEL": carded, "OUTPUT": html},
                            feedback=feedback)
    assert result["ENGINE"] == mode and result["OUTPUT"] == html
    expected = _card_text(geoddu_cli, carded)
    assert result["TEXT"] == expected
    assert expected.splitlines() == [f"Model card of {carded}",
                                     "  description: Water & forest <test> model",
                                     "  license: CC-BY-4.0", "  authors: A. Doe; B. Roe"]
    assert expected.splitlines() == [m for m in feedback.messages
                                     if m in expected.splitlines()]
    page = open(html, encoding="utf-8").read()
    assert "<th>description</th><td>Water &amp; forest &lt;test&gt; model</td>" in page
    assert "<th>license</th><td>CC-BY-4.0</td>" in page

    # A checkpoint without a card says so; a file that is no checkpoint is one line, no page.
    bare = processing.run("geoddu:modelcard", {"MODEL": data["model"], "OUTPUT": str(
        tmp_path / "bare.html")}, feedback=feedback_cls())
    assert bare["TEXT"] == _card_text(geoddu_cli, data["model"])
    assert bare["TEXT"].startswith(f"{data['model']}: no model card")
    with pytest.raises(QgsProcessingException) as info:
        processing.run("geoddu:modelcard", {"MODEL": data["bad_model"], "OUTPUT": str(
            tmp_path / "bad" / "card.html")}, feedback=feedback_cls())
    assert "not a geoddu checkpoint" in str(info.value)
    assert "\n" not in str(info.value).strip()
    assert sorted(os.listdir(tmp_path)) == ["bare.html", "cards"]


def test_segment_logs_the_model_card(plugin, data, carded, mode, feedback_cls, geoddu_cli,
                                     tmp_path):
    import processing

    feedback = feedback_cls()
    processing.run("geoddu:segment", {"INPUT": data["image"], "MODEL": carded,
                                      "OUTPUT": str(tmp_path / "classes.tif")},
                   feedback=feedback)
    lines = _card_text(geoddu_cli, carded).splitlines()
    start = feedback.messages.index(lines[0])
    assert feedback.messages[start:start + len(lines)] == lines
    # Before the run: the card is what the user checks the model against.
    assert start < min(i for i, m in enumerate(feedback.messages) if m.startswith("geoddu: "))
