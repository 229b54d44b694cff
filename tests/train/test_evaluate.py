"""`geoddu evaluate`: dataset-wide IoU (Eq. 2) that agrees with what `segment` predicts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.data import open_dataset
from geoddu.data.synthetic import write
from geoddu.metrics import IoUAccumulator
from geoddu.predictor import load_model
from geoddu.train import preset, start_training

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = write(root / "k2", 2, train=8, val=4, test=5, seed=3)
    cfg = preset("synthetic", epochs=1, batch_size=4)
    result = start_training("synthetic", data, root / "run", cfg, arch="DDU-Net(2,8,Y)",
                            model_options={"base_channels": 4})
    return data, result.best


def test_evaluate_matches_the_predictor(trained):
    data, ckpt = trained
    res = CliRunner().invoke(cli, ["evaluate", "-m", str(ckpt), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["dataset"] == "synthetic" and out["split"] == "test" and out["images"] == 5
    assert out["grid"] == [1, 2] and out["subimage_size"] == [32, 32]
    # Eq. (2): counts summed over the split, with the in-memory reference of `segment`.
    model = load_model(ckpt)
    acc = IoUAccumulator(3)
    for image, labels in open_dataset("synthetic", data, "test"):
        acc.update(model.predict(image), labels)
    want = acc.iou()
    got = np.array([np.nan if v is None else v for v in out["iou"].values()])
    assert np.allclose(got, want, equal_nan=True)
    assert out["miou"] == pytest.approx(acc.miou())


def test_evaluate_on_more_subimages_than_training(trained, tmp_path):
    _, ckpt = trained
    k4 = write(tmp_path / "k4", 4, train=0, val=0, test=3, seed=0)
    runner = CliRunner()
    res = runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--dataset", "synthetic", "--data",
                              str(k4), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    # The checkpoint's 32 px subimages: four of them on the 128 x 32 px images (Sec. V-A4).
    assert out["grid"] == [1, 4] and out["images"] == 3
    res = runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--subimages", "1x1", "--json"])
    assert json.loads(res.output)["grid"] == [1, 1]
    table = runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--split", "val"])
    assert table.exit_code == 0 and "mIoU" in table.output and "line" in table.output


def test_evaluate_needs_to_know_the_data(tmp_path):
    init = tmp_path / "init.pt"
    runner = CliRunner()
    assert runner.invoke(cli, ["init", "-o", str(init), "--in-channels", "1", "--depth", "2",
                               "--base-channels", "4", "--comm-features", "8"]).exit_code == 0
    res = runner.invoke(cli, ["evaluate", "-m", str(init)])
    assert res.exit_code == 1 and "give --dataset and --data" in res.output
    k2 = write(tmp_path / "k2", 2, train=0, val=0, test=2)
    res = runner.invoke(cli, ["evaluate", "-m", str(init), "--dataset", "synthetic", "--data",
                              str(k2), "--subimage-size", "32", "-q"])
    assert res.exit_code == 0 and res.output.startswith("mIoU")


def test_evaluate_in_bf16_is_close_to_fp32_and_fp16_needs_cuda(trained):
    _, ckpt = trained
    runner = CliRunner()
    fp32 = json.loads(runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--json"]).output)
    res = runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--precision", "bf16", "--json"])
    assert res.exit_code == 0, res.output
    bf16 = json.loads(res.output)
    assert (fp32["precision"], bf16["precision"]) == ("fp32", "bf16")
    # The same counts up to a few near-ties flipped by bf16's coarser logits.
    assert bf16["miou"] == pytest.approx(fp32["miou"], abs=0.02)
    assert bf16["loss"] != fp32["loss"]  # it really ran in bf16
    assert bf16["loss"] == pytest.approx(fp32["loss"], rel=0.02)
    res = runner.invoke(cli, ["evaluate", "-m", str(ckpt), "--precision", "fp16"])
    assert res.exit_code == 1 and "fp16 needs a CUDA device" in res.output
