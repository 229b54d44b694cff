"""`geoddu assess --into MODEL`: the figures go into the model card's "accuracy" field, atomically,
weights untouched; a bad model is one error line before any work, and no output is left; a
tampered accuracy section is refused field by field."""

from __future__ import annotations

import copy
import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli
from helpers import make_checkpoint
from rasterio.transform import from_origin
from shapely.geometry import Point

import geoddu
from geoddu.accuracy.model_card import card_section
from geoddu.card import check_card
from geoddu.checkpoint import load_checkpoint, read_card, update_card
from geoddu.errors import GeodduError

TRANSFORM = from_origin(500_000, 4_000_000, 10.0, 10.0)
CRS = "EPSG:32631"
NAMES = ["water", "forest", "crop"]
# (row, col, reference): the map is water for col < 20, forest for 20-49, crop for 50+.
POINTS = [(5, 5, "water"), (6, 6, "water"), (7, 7, "forest"), (10, 25, "forest"),
          (11, 26, "forest"), (12, 27, "crop"), (20, 55, "crop"), (21, 56, "crop"),
          (22, 57, "water")]


@pytest.fixture
def inputs(tmp_path):
    cls = np.zeros((60, 80), np.uint8)
    cls[:, 20:50] = 1
    cls[:, 50:] = 2
    cls[50:, 60:] = 255
    class_map = tmp_path / "map.tif"
    with rasterio.open(class_map, "w", driver="GTiff", width=80, height=60, count=1,
                       dtype="uint8", crs=CRS, transform=TRANSFORM, nodata=255) as ds:
        ds.write(cls, 1)
        ds.update_tags(CLASS_NAMES=json.dumps(NAMES))
    points = tmp_path / "points.gpkg"
    geometry = [Point(TRANSFORM * (c + 0.5, r + 0.5)) for r, c, _ in POINTS]
    gpd.GeoDataFrame({"reference": [v for *_, v in POINTS]}, geometry=geometry,
                     crs=CRS).to_file(points)
    model = make_checkpoint(tmp_path / "model.pt", num_classes=3)
    return class_map, points, model


def _weights(path) -> dict[str, bytes]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: (str(v.dtype), tuple(v.shape), v.numpy().tobytes()) for k, v in state.items()}


def _one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    text = res.output.strip()
    assert text.startswith("Error:") and "\n" not in text and "Traceback" not in text, text
    return text


def test_python_api_writes_the_section(inputs):
    class_map, points, model = inputs
    before = _weights(model)
    result = geoddu.assess(class_map, points, class_column="reference", into=model)
    card = read_card(model)
    assert card["accuracy"] == result.card_section
    acc = card["accuracy"]
    assert acc["map"] == "map.tif" and acc["reference"] == "points.gpkg"
    assert acc["design"] == "stratified" and acc["sample_size"] == len(POINTS)
    e = result.estimates
    assert acc["overall_accuracy"]["estimate"] == pytest.approx(e.overall)
    assert acc["overall_accuracy"]["ci"] == pytest.approx(1.96 * e.overall_se)
    assert [c["name"] for c in acc["classes"]] == NAMES and [c["id"] for c in acc["classes"]] == [
        0, 1, 2]
    forest = acc["classes"][1]
    assert forest["users_accuracy"]["estimate"] == pytest.approx(2 / 3)
    assert forest["area_ha"]["estimate"] == pytest.approx(e.area[1])
    assert forest["sample_units"] == 3 and forest["mapped_pixels"] == 60 * 30
    assert result.to_dict()["into"] == str(model)
    # Plain Python only: loads with weights_only=True (read_card did) and survives JSON.
    assert json.loads(json.dumps(acc)) == acc
    assert _weights(model) == before


def test_cli_into_then_card_and_info_show_it(inputs, tmp_path):
    class_map, points, model = inputs
    before = _weights(model)
    runner = CliRunner()
    out = tmp_path / "out.json"
    res = runner.invoke(cli, ["assess", str(class_map), "-r", str(points), "--class-column",
                              "reference", "--into", str(model), "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "model card of" in res.stderr
    data = json.loads(out.read_text())
    acc = read_card(model)["accuracy"]
    assert acc["overall_accuracy"] == data["overall_accuracy"]
    assert [c["users_accuracy"]["estimate"] for c in acc["classes"]] == \
        data["users_accuracy"]["estimate"]
    assert _weights(model) == before
    wide = {"COLUMNS": "1000"}
    for command in (["card", "-m", str(model)], ["info", "-m", str(model)]):
        res = runner.invoke(cli, command, env=wide)
        assert res.exit_code == 0, res.output
        oa = data["overall_accuracy"]
        assert f"overall accuracy {oa['estimate']:.3f} ± {oa['ci']:.3f} (95%)" in res.output
        assert "water: user's" in res.output
    res = runner.invoke(cli, ["card", "-m", str(model), "--json"])
    assert json.loads(res.output)["accuracy"] == acc
    # Again: the section is replaced, not added to.
    res = runner.invoke(cli, ["assess", str(class_map), "-r", str(points), "--class-column",
                              "reference", "--into", str(model), "--design", "simple", "-q"])
    assert res.exit_code == 0, res.output
    assert read_card(model)["accuracy"]["design"] == "simple"


def _no_outputs_left(folder, names):
    assert not any((folder / n).exists() for n in names)
    assert not [p.name for p in folder.iterdir() if ".geoddu-tmp-" in p.name]


@pytest.mark.parametrize("problem", ["missing", "not a checkpoint", "a folder", "damaged card"])
def test_a_bad_model_is_one_line_before_any_output(inputs, tmp_path, problem):
    class_map, points, model = inputs
    if problem == "missing":
        target, message = tmp_path / "nope.pt", "checkpoint not found"
    elif problem == "not a checkpoint":
        target, message = tmp_path / "notes.pt", "not a geoddu checkpoint"
        target.write_text("hello")
    elif problem == "a folder":
        target, message = tmp_path, "is a directory"
    else:
        ckpt = torch.load(model, weights_only=True)
        ckpt["card"] = {"accuracy": {"overall": 0.9}}
        target, message = tmp_path / "damaged.pt", "card.accuracy: unknown key(s) 'overall'"
        torch.save(ckpt, target)
    before = target.read_bytes() if target.is_file() else None
    res = CliRunner().invoke(cli, [
        "assess", str(class_map), "-r", str(points), "--class-column", "reference", "--into",
        str(target), "--json", str(tmp_path / "a.json"), "--csv", str(tmp_path / "a.csv"),
        "--report", str(tmp_path / "a.html")])
    assert message in _one_line_error(res)
    _no_outputs_left(tmp_path, ["a.json", "a.csv", "a.html"])
    if before is not None:
        assert target.read_bytes() == before
    with pytest.raises(GeodduError, match=message.replace("(", r"\(").replace(")", r"\)")):
        geoddu.assess(class_map, points, class_column="reference", into=target)


def test_into_must_not_be_an_output(inputs, tmp_path):
    class_map, points, model = inputs
    before = model.read_bytes()
    res = CliRunner().invoke(cli, ["assess", str(class_map), "-r", str(points), "--class-column",
                                   "reference", "--into", str(model), "--json", str(model),
                                   "--overwrite"])
    assert "--into" in _one_line_error(res)
    assert model.read_bytes() == before


def test_a_failed_card_write_leaves_no_output(inputs, tmp_path, monkeypatch):
    """The card is written after the figures and before the outputs are renamed into place:
    if it fails, nothing is left."""
    class_map, points, model = inputs
    import geoddu.accuracy.model_card as model_card

    def refuse(*_a, **_k):
        raise GeodduError(f"{model}: cannot write checkpoint: no space left on device")

    monkeypatch.setattr(model_card, "write_into_card", refuse)
    res = CliRunner().invoke(cli, ["assess", str(class_map), "-r", str(points), "--class-column",
                                   "reference", "--into", str(model), "--csv",
                                   str(tmp_path / "a.csv")])
    assert "no space left" in _one_line_error(res)
    _no_outputs_left(tmp_path, ["a.csv"])
    assert "accuracy" not in read_card(model)


# -- the card's checks of the section ----------------------------------------------------------

def _section(inputs) -> dict:
    class_map, points, _ = inputs
    return card_section(geoddu.assess(class_map, points, class_column="reference"))


TAMPERED = {
    "unknown key": (lambda a: a.update(kappa=0.8), "card.accuracy: unknown key(s) 'kappa'"),
    "missing key": (lambda a: a.pop("overall_accuracy"), "card.accuracy: missing overall_acc"),
    "text for a number": (lambda a: a["overall_accuracy"].update(estimate="0.9"),
                          "card.accuracy.overall_accuracy.estimate: must be a number"),
    "share above 1": (lambda a: a["classes"][0]["users_accuracy"].update(estimate=1.5),
                      "card.accuracy.classes[0].users_accuracy.estimate: must be a number "
                      "between 0 and 1"),
    "negative area": (lambda a: a["classes"][1]["area_ha"].update(estimate=-3.0),
                      "card.accuracy.classes[1].area_ha.estimate: must be a number of at least 0"),
    "bad class id": (lambda a: a["classes"][0].update(id=300),
                     "card.accuracy.classes[0].id: must be a class id from 0 to 254"),
    "twice the same class": (lambda a: a["classes"][1].update(id=0),
                             "card.accuracy.classes: a class id appears twice"),
    "unknown design": (lambda a: a.update(design="cluster"),
                       "card.accuracy.design: must be stratified or simple"),
    "negative sample": (lambda a: a.update(sample_size=-1),
                        "card.accuracy.sample_size: must be a whole number"),
    "not a dict": (lambda a: a.clear() or a.update(x=None), "card.accuracy: unknown key(s)"),
    "notes not texts": (lambda a: a.update(notes=[1]), "card.accuracy.notes[0]: must be text"),
    "infinite": (lambda a: a["overall_accuracy"].update(se=float("inf")), "finite number"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_a_tampered_accuracy_section_is_refused_with_one_line(inputs, tmp_path, name):
    _, _, model = inputs
    good = _section(inputs)
    assert check_card({"accuracy": good})["accuracy"] == good
    tamper, message = TAMPERED[name]
    bad = copy.deepcopy(good)
    tamper(bad)
    # Written past the checks (as a stranger's file would be): refused on load.
    ckpt = torch.load(model, weights_only=True)
    ckpt["card"] = {"accuracy": bad}
    path = tmp_path / "tampered.pt"
    torch.save(ckpt, path)
    with pytest.raises(GeodduError) as err:
        load_checkpoint(path)
    text = str(err.value)
    assert message in text and "tampered.pt" in text and "\n" not in text
    assert "--clear" in text
    res = CliRunner().invoke(cli, ["info", "-m", str(path)])
    assert message in _one_line_error(res)
    # And never written: update_card checks before it writes.
    before = model.read_bytes()
    with pytest.raises(GeodduError, match="card.accuracy"):
        update_card(model, {"accuracy": bad})
    assert model.read_bytes() == before
