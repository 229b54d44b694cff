"""The model card's "test" section: `geoddu train` evaluates the saved weights on the test split
once, after the last epoch, and says so when the data has no test split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.crs import CRS

import geoddu.train.loop as loop
from geoddu.checkpoint import load_checkpoint, model_from_checkpoint
from geoddu.data import open_dataset
from geoddu.errors import GeodduError
from geoddu.train import preset, resume_training, start_training
from geoddu.train.evaluation import evaluate

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = [{"name": "dark", "color": [0, 0, 0]}, {"name": "bright", "color": [255, 255, 255]}]
TRAIN = ["train", "--dataset", "folder", "--patch-size", "32", "--depth", "2",
         "--base-channels", "4", "--comm-features", "8", "--batch-size", "4", "-q"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Two 1-band GeoTIFFs of 64 x 96 px: 10 patches of 32 px (8 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("data") / "folder"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        image = rng.integers(0, 256, (1, 64, 96))
        kw = dict(driver="GTiff", width=96, height=64, count=1, dtype="uint8",
                  crs=CRS.from_epsg(32631), transform=Affine(2.0, 0, 6e5, 0, -2.0, 5.77e6))
        with rasterio.open(root / "images" / f"{name}.tif", "w", **kw) as dst:
            dst.write(image.astype("uint8"))
        with rasterio.open(root / "labels" / f"{name}.tif", "w", **kw) as dst:
            dst.write((image > 127).astype("uint8"))
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


def _test_figures(ckpt_path, root, **options):
    """What `evaluate` gives for a checkpoint's weights on the test split, independently."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    test = open_dataset("folder", root, "test", patch_size=32, **options)
    grid = tuple(ckpt["training"]["grid"])  # the training grid, as the trainer evaluates
    return evaluate(model, test, normalization=ckpt["normalization"], grid=grid), len(test)


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    """One epoch with the default fractions (a test split of one patch)."""
    out = tmp_path_factory.mktemp("run") / "run"
    res = CliRunner().invoke(cli, [*TRAIN, "--data", str(data), "-o", str(out), "--epochs", "1"])
    assert res.exit_code == 0, res.output
    return out


def test_train_records_the_test_split(data, run):
    for name in ("best.pt", "last.pt"):
        test = load_checkpoint(run / name)["card"]["test"]
        assert test["evaluated"] is True and test["split"] == "test" and test["epoch"] == 1
        expect, patches = _test_figures(run / name, data)
        assert test["patches"] == patches == 1 and test["pixels"] == expect["pixels"] == 32 * 32
        assert test["miou"] == pytest.approx(expect["miou"])
        assert test["overall_accuracy"] == pytest.approx(expect["overall_accuracy"])
        assert list(test["iou"]) == ["dark", "bright"]
    # Wide enough that rich does not wrap the row.
    res = CliRunner().invoke(cli, ["card", "-m", str(run / "best.pt")], env={"COLUMNS": "1000"})
    assert "on 1 test patches (1,024 px), weights of epoch 1" in res.output


def test_no_test_split_is_said_not_omitted(data, tmp_path):
    res = CliRunner().invoke(cli, [*TRAIN, "--data", str(data), "-o", str(tmp_path / "run"),
                                   "--epochs", "1", "--test-fraction", "0"])
    assert res.exit_code == 0, res.output
    test = load_checkpoint(tmp_path / "run" / "best.pt")["card"]["test"]
    assert test["evaluated"] is False and test["reason"].startswith("no test split: ")
    assert "test split is empty" in test["reason"]


def test_best_before_the_last_epoch_is_tested_with_its_own_weights(data, tmp_path, monkeypatch):
    """Validation made worse after epoch 1: best.pt (epoch 1) and last.pt (epoch 2, then 3 after
    a resume) each carry the test figures of their own weights."""
    real = loop.evaluate
    val_losses = iter([0.5, 0.9, 0.8])

    def fake(model, dataset, **kw):
        out = real(model, dataset, **kw)
        if dataset.split == "val":
            out["loss"] = next(val_losses)
        return out

    monkeypatch.setattr(loop, "evaluate", fake)
    run = tmp_path / "run"
    config = preset("folder", epochs=2, batch_size=4, lr_patience=10, patience=10)
    result = start_training("folder", data, run, config, arch="DDU-Net(2,8,Y)",
                            model_options={"base_channels": 4}, dataset_options={"patch_size": 32})
    assert result.best_epoch == 1
    best, last = (load_checkpoint(run / n)["card"]["test"] for n in ("best.pt", "last.pt"))
    assert (best["epoch"], last["epoch"]) == (1, 2) and result.test == best
    for name, test in (("best.pt", best), ("last.pt", last)):
        expect, _ = _test_figures(run / name, data)
        assert test["miou"] == pytest.approx(expect["miou"])
        assert test["overall_accuracy"] == pytest.approx(expect["overall_accuracy"])
    # The result's model is still the last epoch's, not the best one swapped in for the test.
    final = load_checkpoint(run / "last.pt")["state_dict"]
    assert all(torch.equal(v, final[k]) for k, v in result.model.state_dict().items())
    # Resumed: best.pt's weights come from the file.
    before = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    again = resume_training(run, epochs=3)
    assert again.best_epoch == 1 and again.test["epoch"] == 1
    assert load_checkpoint(run / "last.pt")["card"]["test"]["epoch"] == 3
    after = torch.load(run / "best.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize("tamper, message", [
    ({"evaluated": True}, "card.test: missing"),
    ({"evaluated": "yes"}, "card.test.evaluated: must be true or false"),
    ({"evaluated": False, "reason": 3}, "card.test.reason: must be text"),
    ({"miou": 1.5}, "card.test.miou: must be a number between 0 and 1"),
    ({"pixels": -1}, "card.test.pixels: must be a whole number"),
    ({"iou": {"dark": "high"}}, "card.test.iou.dark: must be a number"),
    ({"split": "val"}, "card.test.split: must be 'test'"),
])
def test_a_tampered_test_section_is_one_line(run, tmp_path, tamper, message):
    ckpt = torch.load(run / "best.pt", weights_only=True)
    test = ckpt["card"]["test"]
    ckpt["card"]["test"] = tamper if "evaluated" in tamper else {**test, **tamper}
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    with pytest.raises(GeodduError) as err:
        load_checkpoint(bad)
    text = str(err.value)
    assert message in text and "bad.pt" in text and "\n" not in text
