"""Model cards (docs/model-cards.md): filled by `geoddu train`, extended by --card and
`geoddu card`, checked field by field on load, shown by `geoddu info`, carried into ONNX."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.crs import CRS

from geoddu.card import MAX_FILE_BYTES, read_card_file
from geoddu.checkpoint import load_checkpoint, read_card, update_card
from geoddu.errors import GeodduError
from geoddu.export_onnx import deepness_metadata
from geoddu.version import __version__

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [{"name": "background", "color": [0, 0, 0]},
           {"name": "building", "color": [220, 20, 60]},
           {"name": "water", "color": [0, 0, 255]}]
CARD = """\
description: Buildings and water from 2 m imagery (test).
license: CC-BY-4.0
authors: [A. Doe, B. Roe]
intended_use: tests only
"""


def _tif(path, array, dtype, nodata=None):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[2], height=array.shape[1],
                       count=array.shape[0], dtype=dtype, crs=CRS.from_epsg(32631),
                       transform=Affine(2.0, 0, 600000.0, 0, -2.0, 5770000.0),
                       nodata=nodata) as dst:
        dst.write(array.astype(dtype))
        if array.shape[0] == 2:
            dst.set_band_description(1, "red")
            dst.set_band_description(2, "nir")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch of a tiny model on two 2-band GeoTIFFs at 2 m in UTM, with a card file."""
    tmp = tmp_path_factory.mktemp("card")
    root = tmp / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a": (64, 96), "b": (64, 64)}.items():
        _tif(root / "images" / f"{name}.tif", rng.integers(0, 200, (2, h, w)), "uint8")
        _tif(root / "labels" / f"{name}.tif", rng.integers(0, 3, (1, h, w)), "uint8")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    card = tmp / "card.yaml"
    card.write_text(CARD)
    out = tmp / "run"
    res = CliRunner().invoke(cli, [
        "train", "--dataset", "folder", "--data", str(root), "-o", str(out), "--patch-size", "32",
        "--depth", "2", "--base-channels", "4", "--comm-features", "8", "--epochs", "1",
        "--batch-size", "4", "--card", str(card), "-q"])
    assert res.exit_code == 0, res.output
    return out


def _one_line_error(res) -> str:
    assert res.exit_code == 1, res.output
    text = res.output.strip()
    assert text.startswith("Error:") and "\n" not in text and "Traceback" not in text, text
    return text


def test_train_fills_the_card(run):
    card = load_checkpoint(run / "best.pt")["card"]
    # Automatic fields: from the GeoTIFFs' transforms and CRS, the data and this machine.
    assert card["pixel_size"] == [2.0, 2.0] and card["crs_units"] == "metre"
    assert card["bands"] == [1, 2] and card["band_names"] == ["red", "nir"]
    assert [c["name"] for c in card["classes"]] == ["background", "building", "water"]
    assert card["normalization"] == {"mean": [0.0, 0.0], "std": [255.0, 255.0]}
    source = card["data_source"]
    assert source["kind"] == "folder" and source["images"] == 2 and source["patch_size"] == [32, 32]
    assert source["patches"]["train"] > 0 and source["patches"]["val"] > 0
    assert card["versions"]["geoddu"] == __version__
    assert card["versions"]["torch"] == torch.__version__
    assert card["hardware"]["device"] == "cpu" and card["hardware"]["threads"] >= 1
    metrics = card["metrics"]
    assert metrics["epoch"] == 1 and 0 <= metrics["val_miou"] <= 1
    assert set(metrics["val_iou"]) == {"background", "building", "water"}
    assert card["training_time_s"] > 0 and card["date"].startswith("20")
    # User fields, from --card.
    assert card["license"] == "CC-BY-4.0" and card["authors"] == ["A. Doe", "B. Roe"]
    assert card["description"].startswith("Buildings") and card["intended_use"] == "tests only"
    assert load_checkpoint(run / "last.pt")["card"]["license"] == "CC-BY-4.0"


def test_resume_keeps_the_user_fields(run, tmp_path):
    again = tmp_path / "run"
    shutil.copytree(run, again)
    before = load_checkpoint(again / "last.pt")["card"]
    res = CliRunner().invoke(cli, ["train", "-o", str(again), "--resume", "--epochs", "2", "-q"])
    assert res.exit_code == 0, res.output
    card = load_checkpoint(again / "last.pt")["card"]
    assert card["license"] == "CC-BY-4.0" and card["authors"] == ["A. Doe", "B. Roe"]
    assert card["metrics"]["epoch"] == 2 and card["training_time_s"] > before["training_time_s"]


def test_card_command_edits_atomically_and_keeps_the_weights(run, tmp_path):
    path = tmp_path / "model.pt"
    shutil.copyfile(run / "best.pt", path)
    before = torch.load(path, weights_only=True)
    runner = CliRunner()
    res = runner.invoke(cli, ["card", "-m", str(path), "--set", "license=MIT", "--set",
                              "authors=C. Poe; D. Moe", "--unset", "intended_use", "--json"])
    assert res.exit_code == 0, res.output
    card = json.loads(res.output)
    assert card["license"] == "MIT" and card["authors"] == ["C. Poe", "D. Moe"]
    assert "intended_use" not in card and card["pixel_size"] == [2.0, 2.0]
    after = torch.load(path, weights_only=True)
    assert after["card"] == card
    # The weights, bit for bit; every other entry as it was.
    assert list(after["state_dict"]) == list(before["state_dict"])
    for key, value in before["state_dict"].items():
        got = after["state_dict"][key]
        assert got.dtype == value.dtype and got.shape == value.shape
        assert got.numpy().tobytes() == value.numpy().tobytes()
    assert {k: v for k, v in after.items() if k not in ("card", "state_dict")} == \
        {k: v for k, v in before.items() if k not in ("card", "state_dict")}
    # Written through a temporary file that was renamed: nothing else left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    res = runner.invoke(cli, ["card", "-m", str(path)])
    assert res.exit_code == 0 and "Model card" in res.output and "C. Poe; D. Moe" in res.output
    assert "metre" in res.output
    assert "not a user field" in _one_line_error(
        runner.invoke(cli, ["card", "-m", str(path), "--set", "pixel_size=1"]))
    assert "not a user field" in _one_line_error(
        runner.invoke(cli, ["card", "-m", str(path), "--unset", "nonsense"]))
    assert "KEY=VALUE" in _one_line_error(
        runner.invoke(cli, ["card", "-m", str(path), "--set", "license"]))


def _figure(estimate, se):
    return {"estimate": estimate, "se": se, "ci": None if se is None else 1.96 * se}


# An "accuracy" section as `geoddu assess --into` writes it (geoddu.accuracy.model_card).
ACCURACY = {
    "map": "map.tif", "reference": "points.gpkg", "reference_kind": "points",
    "sample_unit": "points", "design": "stratified", "sample_size": 40, "skipped": 0,
    "z": 1.96, "area_unit": "ha", "overall_accuracy": _figure(0.91, 0.03),
    "quantity_disagreement": 0.02, "allocation_disagreement": 0.07,
    "classes": [{"id": 1, "name": "water", "mapped_pixels": 120, "mapped_area_ha": 4.8,
                 "sample_units": 40, "users_accuracy": _figure(0.9, 0.04),
                 "producers_accuracy": _figure(1.0, None), "f1": 0.95, "iou": None,
                 "area_ha": _figure(4.5, 0.3)}],
    "notes": [], "date": "2026-01-02T03:04:05+00:00",
}


def test_update_card_and_info(run, tmp_path, checkpoint):
    path = tmp_path / "trained.pt"
    shutil.copyfile(run / "best.pt", path)
    figures = ACCURACY
    card = update_card(path, {"accuracy": figures})
    assert card["accuracy"] == figures and read_card(path)["accuracy"] == figures
    assert read_card(path)["license"] == "CC-BY-4.0"
    runner = CliRunner()
    res = runner.invoke(cli, ["info", "-m", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["checkpoint"]["card"]["accuracy"] == figures
    res = runner.invoke(cli, ["info", "-m", str(path)], env={"COLUMNS": "1000"})
    assert res.exit_code == 0 and "Model card" in res.output and "CC-BY-4.0" in res.output
    assert "overall accuracy 0.910 ± 0.059 (95%), 40 points, stratified design" in res.output
    assert "water: user's 0.900 ± 0.078, producer's 1.000, area 4.5 ± 0.6 ha" in res.output
    # A checkpoint without a card stays valid and says so.
    assert "card" not in load_checkpoint(checkpoint) and read_card(checkpoint) == {}
    res = runner.invoke(cli, ["card", "-m", str(checkpoint)])
    assert res.exit_code == 0 and "no model card" in res.output
    with pytest.raises(GeodduError, match="card.accuracy: must be a dict"):
        update_card(path, {"accuracy": 0.9})
    assert read_card(path)["accuracy"] == figures  # a refused update writes nothing


HOSTILE = {
    "unknown key": ({"evil": 1}, "unknown field(s) 'evil'"),
    "wrong type": ({"license": 3}, "card.license: must be text, not 3"),
    "huge string": ({"description": "x" * 10_000_000}, "more than the 20,000 allowed"),
    "deep nesting": ({"accuracy": json.loads("[" * 50 + "]" * 50)}, "nested more than"),
    "not a dict": (["license"], "card: must be a dict"),
    "nan": ({"training_time_s": float("nan")}, "must be a finite number"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_cards_are_one_line_on_load(run, tmp_path, name):
    card, message = HOSTILE[name]
    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["card"] = card
    path = tmp_path / "bad.pt"
    torch.save(ckpt, path)
    with pytest.raises(GeodduError, match="bad.pt") as err:
        load_checkpoint(path)
    assert message in str(err.value) and "\n" not in str(err.value)
    if name == "unknown key":
        runner = CliRunner()
        text = _one_line_error(runner.invoke(cli, ["info", "-m", str(path)]))
        assert message in text and "--clear" in text
        # The way out: drop the damaged card (unread), keep the weights.
        res = runner.invoke(cli, ["card", "-m", str(path), "--clear", "--set", "license=MIT"])
        assert res.exit_code == 0, res.output
        assert load_checkpoint(path)["card"] == {"license": "MIT"}
        res = runner.invoke(cli, ["card", "-m", str(path), "--unset", "license"])
        assert res.exit_code == 0 and "card" not in load_checkpoint(path)


@pytest.mark.parametrize("text, message", [
    ("description: fine\nwho: me\n", "unknown field(s) 'who'"),
    ("pixel_size: 3\n", "unknown field(s) 'pixel_size'"),  # geoddu's fields are not the user's
    ("license: [1, 2]\n", "card.license: must be text"),
    ("authors: {a: 1}\n", "card.authors: must be text or a list of texts"),
    ("description: " + "[" * 60 + "]" * 60 + "\n", "nested"),
    ("description: !!python/object/apply:os.system ['echo hi']\n", "not YAML or JSON"),
    ("description: [unclosed\n", "not YAML or JSON"),
    # "Billion laughs": aliases that stand for 10^8 strings in a few hundred bytes.
    ("description: [&a [x, x, x, x, x, x, x, x, x, x], " + ", ".join(
        f"&{c} [{', '.join(['*' + p] * 10)}]" for p, c in zip("abcdef", "bcdefg", strict=True))
     + "]\n", "more than 200,000 values"),
    ('{"license": "MIT", "citation": "Doe 2026"}', None),  # JSON is YAML
])
def test_card_files(tmp_path, text, message):
    path = tmp_path / "card.yaml"
    path.write_text(text)
    if message is None:
        assert read_card_file(path) == {"license": "MIT", "citation": "Doe 2026"}
        return
    with pytest.raises(GeodduError) as err:
        read_card_file(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_huge_card_file_is_refused_before_training(tmp_path):
    path = tmp_path / "card.yaml"
    path.write_text("description: " + "x" * (MAX_FILE_BYTES + 1) + "\n")
    data = tmp_path / "data"
    data.mkdir()
    res = CliRunner().invoke(cli, ["train", "--dataset", "synthetic", "--data", str(data), "-o",
                                   str(tmp_path / "run"), "--card", str(path)])
    assert "bytes, more than the" in _one_line_error(res)
    assert not (tmp_path / "run").exists()


def test_onnx_carries_the_card(run, tmp_path):
    ckpt = load_checkpoint(run / "best.pt")
    meta = deepness_metadata(ckpt, (32, 32), (1, 1), "float32")
    assert json.loads(meta["geoddu_card"]) == ckpt["card"]
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(cli, ["export", "-m", str(run / "best.pt"), "-o", str(out),
                                   "--size", "32", "32"])
    assert res.exit_code == 0, res.output
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["geoddu_card"])["license"] == "CC-BY-4.0"
