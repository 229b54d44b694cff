"""Training: checkpoints, exact resume, early stopping, the command line, losses, augmentation."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.checkpoint import load_checkpoint, model_from_checkpoint
from geoddu.data import open_dataset
from geoddu.data.synthetic import write
from geoddu.errors import GeodduError
from geoddu.metrics import dice_loss
from geoddu.models import create_model
from geoddu.predictor import load_model
from geoddu.train import Trainer, preset, resume_training, start_training
from geoddu.train.augment import augment_batch
from geoddu.train.losses import class_dice_loss

TINY = {"base_channels": 4}
ARCH = "DDU-Net(2,8,Y)"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write(tmp_path_factory.mktemp("data") / "k2", 2, train=12, val=6, test=6, seed=0)


def _config(**kw):
    # Dropout and augmentation on, so the RNG states are exercised by the resume test.
    kw = {"epochs": 2, "batch_size": 4, "augment": True, "dropout": 0.2, **kw}
    return preset("synthetic", **kw)


def test_run_writes_self_describing_checkpoints(synthetic, tmp_path):
    run = tmp_path / "run"
    result = start_training("synthetic", synthetic, run, _config(), arch=ARCH, model_options=TINY)
    assert result.epochs_run == 2 and result.best.is_file() and result.last.is_file()
    for name in ("best.pt", "last.pt"):
        # Loadable with weights_only=True: plain data only, resume state included.
        raw = torch.load(run / name, map_location="cpu", weights_only=True)
        assert raw["format"] == "geoddu-checkpoint"
    ckpt = load_checkpoint(run / "last.pt")
    assert "resume" in ckpt and "resume" not in load_checkpoint(run / "best.pt")
    assert [c["name"] for c in ckpt["classes"]] == ["background", "line", "circle"]
    assert ckpt["bands"] == [1] and ckpt["subimage_size"] == 32
    assert ckpt["normalization"] == {"mean": [0.0], "std": [255.0]}
    assert ckpt["config"]["comm_features"] == 8 and ckpt["config"]["communicate"]
    assert ckpt["config"]["dropout"] == 0.2 and ckpt["config"]["in_channels"] == 1
    training = ckpt["training"]
    assert training["config"]["lr"] == 0.008 and training["config"]["batch_size"] == 4
    assert training["dataset"] == {"kind": "synthetic", "k": 2, "seed": 0}
    assert training["grid"] == [1, 2] and training["epochs_run"] == 2
    assert ckpt["geoddu_version"]
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "val_loss", "val_miou", "iou_line", "lr"} <= set(rows[0])
    assert len(json.loads((run / "history.json").read_text())) == 2
    # segment/predict need nothing but the checkpoint: the classes the trained network itself
    # gives (its 1 x 2 subimages, the stored normalisation), up to BatchNorm folding's rounding.
    model = load_model(run / "best.pt")
    image, _ = open_dataset("synthetic", synthetic, "test")[0]
    classes = model.predict(image)
    # ... and predict is the checkpoint's model: the argmax of its plain forward on the
    # normalised image, over the subimage grid the checkpoint records.
    best = load_checkpoint(run / "best.pt")
    net = model_from_checkpoint(best).eval()
    norm = best["normalization"]
    x = (torch.from_numpy(np.asarray(image, np.float32))
         - torch.tensor(norm["mean"]).view(-1, 1, 1)) / torch.tensor(norm["std"]).view(-1, 1, 1)
    size = best["subimage_size"]
    with torch.no_grad():
        logits = net(x[None], (32 // size, 64 // size))
    assert classes.shape == (32, 64)
    # (load_model folds BatchNorm into the convs: equal up to float rounding, so pixels whose
    # two best logits are closer than that may go either way)
    top = logits[0].topk(2, dim=0).values
    clear = ((top[0] - top[1]) > 1e-4).numpy()
    assert clear.mean() > 0.99
    assert np.array_equal(classes[clear], logits[0].argmax(0).numpy()[clear])


def test_resume_continues_exactly(synthetic, tmp_path):
    whole = start_training("synthetic", synthetic, tmp_path / "whole", _config(), arch=ARCH,
                           model_options=TINY)
    start_training("synthetic", synthetic, tmp_path / "cut", _config(epochs=1), arch=ARCH,
                   model_options=TINY)
    resumed = resume_training(tmp_path / "cut", epochs=2)
    assert resumed.epochs_run == 2
    a = load_checkpoint(tmp_path / "whole" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for key, value in a["resume"]["optimizer"]["state"].items():
        assert torch.equal(value["exp_avg"], b["resume"]["optimizer"]["state"][key]["exp_avg"])
    assert a["resume"]["scheduler"] == b["resume"]["scheduler"]
    assert torch.equal(a["resume"]["torch_rng"], b["resume"]["torch_rng"])
    assert [r["val_loss"] for r in whole.history] == [r["val_loss"] for r in resumed.history]


def test_early_stopping_respects_the_minimum_epoch(synthetic, tmp_path):
    train, val = (open_dataset("synthetic", synthetic, s) for s in ("train", "val"))
    torch.manual_seed(0)
    model = create_model(ARCH, in_channels=1, num_classes=3, dropout=0.0, **TINY)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0  # frozen running statistics: the validation loss cannot move
    cfg = _config(epochs=8, lr=1e-30, patience=2, min_epochs=4, augment=False, dropout=0.0)
    result = Trainer(model, train, val, tmp_path / "es", cfg).fit()
    # Epoch 1 sets the best loss, epochs 2-3 do not improve; stopping waits for epoch 4.
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1


def test_lr_is_halved_on_a_plateau(synthetic, tmp_path):
    train, val = (open_dataset("synthetic", synthetic, s) for s in ("train", "val"))
    model = create_model(ARCH, in_channels=1, num_classes=3, dropout=0.0, **TINY)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 0.0
    # PyTorch semantics: halved once more than lr_patience epochs in a row did not improve.
    cfg = _config(epochs=4, lr=1e-6, lr_patience=1, patience=10, augment=False)
    result = Trainer(model, train, val, tmp_path / "lr", cfg).fit()
    assert [r["lr"] for r in result.history] == [1e-6, 1e-6, 1e-6, 5e-7]


def test_train_command_and_resume(synthetic, tmp_path):
    runner = CliRunner()
    run = tmp_path / "cli-run"
    args = ["train", "--dataset", "synthetic", "--data", str(synthetic), "-o", str(run),
            "--depth", "2", "--comm-features", "8", "--epochs", "1", "--batch-size", "6"]
    res = runner.invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "epoch   1/1" in res.output and "best.pt: epoch 1" in res.output
    ckpt = load_checkpoint(run / "best.pt")
    # Synthetic defaults: the paper's base-4 network (Table VIII) with the options given.
    assert ckpt["config"]["base_channels"] == 4 and ckpt["config"]["depth"] == 2
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "--resume" in again.output
    res = runner.invoke(cli, ["train", "-o", str(run), "--resume", "--epochs", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "last.pt")["training"]["epochs_run"] == 2
    bad = runner.invoke(cli, ["train", "--dataset", "synthetic", "--data", str(synthetic), "-o",
                              str(tmp_path / "x"), "--classes", "5"])
    assert bad.exit_code == 1 and "num classes 5 given" in bad.output


def test_resume_accepts_the_first_command_line(synthetic, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    first = ["train", "-q", "--dataset", "synthetic", "--data", str(synthetic), "-o", str(run),
             "--depth", "2", "--comm-features", "8", "--epochs", "1", "--batch-size", "6",
             "--lr", "0.001", "--no-augment", "--seed", "3", "--subimages", "1x2"]
    res = runner.invoke(cli, first)
    assert res.exit_code == 0, res.output
    # The same command line with --resume: every option equals the stored run; --epochs may
    # extend it.
    res = runner.invoke(cli, [*first, "--resume", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "last.pt")["training"]["epochs_run"] == 2
    # A conflicting option is refused by name, with both values, before any work.
    for option, message in (
        (["--lr", "0.01"], "--lr 0.01 conflicts with the run's 0.001; a resumed run keeps its "
                           "configuration"),
        (["--augment"], "--augment conflicts with the run's --no-augment"),
        (["--depth", "3"], "--depth 3 conflicts with the run's 2"),
        (["--subimages", "2"], "--subimages 2x2 conflicts with the run's 1x2"),
        (["--dataset", "folder"], "--dataset folder conflicts with the run's synthetic"),
    ):
        res = runner.invoke(cli, ["train", "-q", "-o", str(run), "--resume", "--epochs", "3",
                                  *option])
        assert res.exit_code == 1, res.output
        assert res.output.strip() == f"Error: {message}" or message in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
    assert load_checkpoint(run / "last.pt")["training"]["epochs_run"] == 2


def test_fine_tune_from_an_init_checkpoint(synthetic, tmp_path):
    runner = CliRunner()
    init = tmp_path / "init.pt"
    res = runner.invoke(cli, ["init", "-o", str(init), "--in-channels", "1", "--depth", "2",
                              "--base-channels", "4", "--comm-features", "8",
                              "--subimage-size", "32"])
    assert res.exit_code == 0, res.output
    result = start_training("synthetic", synthetic, tmp_path / "ft", _config(epochs=1),
                            init_checkpoint=init)
    assert result.epochs_run == 1
    with pytest.raises(GeodduError, match="leave out the model options"):
        start_training("synthetic", synthetic, tmp_path / "ft2", _config(epochs=1),
                       init_checkpoint=init, arch="U-Net(2)")


def test_unet_baseline_trains_on_whole_images(synthetic, tmp_path):
    result = start_training("synthetic", synthetic, tmp_path / "unet",
                            _config(epochs=1, subimages=(1, 1)), arch="U-Net(2)",
                            model_options=TINY)
    ckpt = load_checkpoint(result.best)
    assert ckpt["config"]["comm_features"] == 0 and ckpt["training"]["grid"] == [1, 1]
    assert ckpt["subimage_size"] == 64  # one 32 x 64 subimage: the larger side is recorded
    assert model_from_checkpoint(ckpt).comm is None


def test_augmentation_keeps_images_and_labels_aligned():
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 3, (16, 8, 8)))
    images = labels[:, None].float() * 10
    x, y = augment_batch(images, labels, rng)
    assert torch.equal(x[:, 0], y.float() * 10)
    assert not torch.equal(y, labels)  # something was flipped or turned
    # Non-square patches are never turned by 90 degrees: each comes out as itself, flipped
    # left-right, upside down or both, and its labels with it.
    wide = torch.arange(8 * 32, dtype=torch.float32).view(8, 1, 4, 8)
    got, got_labels = augment_batch(wide, wide[:, 0].long(), rng)
    assert got.shape == (8, 1, 4, 8)
    for k in range(8):
        flips = [wide[k], wide[k].flip(-1), wide[k].flip(-2), wide[k].flip(-1, -2)]
        assert any(torch.equal(got[k], f) for f in flips), k
        assert torch.equal(got_labels[k], got[k, 0].long())
    assert not torch.equal(got, wide)  # something was flipped


def test_losses():
    target = torch.randint(0, 3, (2, 8, 8))
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert float(class_dice_loss(perfect, target)) < 1e-6
    assert float(dice_loss(perfect, target)) < 1e-6
    # A rare class missed entirely costs about a third of the per-class loss (its own third
    # plus a little background), but only its pixel share of the global ratio (Eq. 1 as
    # printed).
    target = torch.zeros(1, 10, 10, dtype=torch.long)
    target[0, 0, :3] = 1
    target[0, 5:, :] = 2
    guess = torch.nn.functional.one_hot(torch.where(target == 1, 0, target), 3)
    guess = guess.permute(0, 3, 1, 2).float() * 50
    background = 1 - 2 * 47 / (47 + 50)
    assert float(class_dice_loss(guess, target)) == pytest.approx((1 + background) / 3, abs=1e-4)
    assert float(dice_loss(guess, target)) == pytest.approx(0.03, abs=1e-3)
    ignored = target.clone()
    ignored[0, 0, :3] = 255
    assert float(class_dice_loss(guess, ignored, ignore_index=255)) < 1e-3
