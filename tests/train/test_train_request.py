"""One training request: checked once when built, the same run from the command line, from JSON
(`geoddu train --request`) and from Python (`geoddu.train_model`), and machine-readable
progress (`--progress json`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli

import geoddu
from geoddu.checkpoint import load_checkpoint
from geoddu.data.synthetic import write
from geoddu.errors import GeodduError
from geoddu.train.request import BATCHNORM_RULES, LOSSES, TrainRequest

pytestmark = pytest.mark.usefixtures("one_thread")
GEODDU = [sys.executable, "-m", "geoddu.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# A tiny run: DDU-Net(2,8,Y) with base 4 on 12 synthetic images, one epoch.
TINY = {"dataset": "synthetic", "arch": "DDU-Net(2,8,Y)", "base_channels": 4, "epochs": 1,
        "batch_size": 6}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write(tmp_path_factory.mktemp("data") / "k2", 2, train=12, val=6, test=0, seed=0)


def test_checked_when_built():
    ok = {"run_dir": "runs/x", "dataset": "synthetic", "data": "data/k2"}
    assert TrainRequest(**ok, subimages="1x2").subimages == (1, 2)
    assert TrainRequest(**ok, subimages=[3, 4], bands=[2, 1]).bands == (2, 1)
    for bad, message in [
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"lr": 0}, "--lr must be above 0, got 0"),
        ({"dropout": 1.0}, "--dropout must be in [0, 1), got 1.0"),
        ({"num_classes": 256}, "--classes must be from 1 to 255, got 256"),
        ({"patch_size": 8}, "--patch-size must be at least 16, got 8"),
        ({"seed": 1.5}, "--seed must be a whole number, got 1.5"),
        ({"epochs": "3"}, "--epochs must be a number, got '3'"),
        ({"loss": "l2"}, "--loss: unknown 'l2'; choose from class-dice, dice"),
        ({"dataset": "mnist"}, "--dataset: unknown 'mnist'; choose from deepglobe, synthetic, "
                               "folder"),
        ({"augment": "yes"}, "--augment must be true or false, got 'yes'"),
        ({"bands": [0, 1]}, "--bands: band numbers start at 1"),
        ({"subimages": "2x"}, "subimage grid '2x': use P (P x P) or NxM"),
        ({"subimages": [0, 2]}, "subimage grid [0, 2]: use P (P x P) or NxM"),
        ({"init_model": 3}, "--model must be a path, got 3"),
        ({"data": None}, "give --dataset and --data (or --resume to continue a run)"),
    ]:
        with pytest.raises(GeodduError) as info:
            TrainRequest(**{**ok, **bad})
        assert str(info.value).startswith(message), (bad, str(info.value))
    # A resumed run needs only its folder.
    assert TrainRequest(run_dir="runs/x", resume=True).given() == {"run_dir": "runs/x",
                                                                  "resume": True}


def test_json_round_trip_unknown_and_missing_fields():
    request = TrainRequest(run_dir="-o d'd;$x", dataset="folder", data="my data",
                           subimages="1x6", bands=(3, 1), augment=False, lr=0.01)
    back = TrainRequest.from_json(request.to_json())
    assert back == request and back.subimages == (1, 6) and back.augment is False
    # Fields left out stay "not given"; False on a yes/no option is given.
    assert back.given() == {"run_dir": "-o d'd;$x", "dataset": "folder", "data": "my data",
                            "bands": (3, 1), "subimages": (1, 6), "lr": 0.01, "augment": False}
    with pytest.raises(GeodduError, match="request: unknown field.s. colour, ranks"):
        TrainRequest.from_dict({**request.to_dict(), "colour": 1, "ranks": 2})
    with pytest.raises(GeodduError, match="request: missing run_dir"):
        TrainRequest.from_dict({"dataset": "synthetic", "data": "d"})
    with pytest.raises(GeodduError, match="request: expected a JSON object"):
        TrainRequest.from_json("[1, 2]")


def test_light_names_are_the_trainers():
    from geoddu.train import losses
    from geoddu.train.batchnorm import RULES

    assert LOSSES == tuple(losses.LOSSES) and BATCHNORM_RULES == RULES


def test_importing_the_request_imports_no_torch():
    code = ("import sys; import geoddu.train.request; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_options_take_the_requests_checks():
    """Each option that sets a TrainRequest field is typed by the field's check: the same
    range from the command line (click's message, exit 2) as from JSON."""
    params = {p.name: p for p in cli.commands["train"].params}
    assert params["epochs"].type.min == 1 and params["num_classes"].type.max == 255
    assert params["dropout"].type.max == 1 and params["dropout"].type.max_open
    assert list(params["loss"].type.choices) == list(LOSSES)
    r = CliRunner().invoke(cli, ["train", "-o", "x", "--resume", "--epochs", "0"])
    assert r.exit_code == 2 and "0 is not in the range x>=1" in r.output


def _train(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, "train", *map(str, args)], input=stdin, capture_output=True,
                          text=True, env=ENV, timeout=300)


def _options(fields: dict) -> list[str]:
    flags = {"num_classes": "--classes", "run_dir": "--output"}
    return [f"{flags.get(k, '--' + k.replace('_', '-'))}={v}" for k, v in fields.items()]


def _same_weights(a, b) -> None:
    wa, wb = load_checkpoint(a / "last.pt"), load_checkpoint(b / "last.pt")
    assert wa["training"]["config"] == wb["training"]["config"]
    for key, value in wa["state_dict"].items():
        assert torch.equal(value, wb["state_dict"][key]), key


def test_request_on_stdin_trains_as_the_command_line_does(synthetic, tmp_path):
    """The same run three ways: options, JSON on stdin (what the QGIS plugin sends, with JSON
    progress), and the Python API; identical weights."""
    by_options, by_request, by_python = (tmp_path / n for n in ("options", "request", "python"))
    r = _train(*_options({**TINY, "data": synthetic, "run_dir": by_options}), "-q")
    assert r.returncode == 0, r.stderr
    request = TrainRequest(run_dir=str(by_request), data=str(synthetic), **TINY)
    r = _train("--request", "-", "--progress", "json", stdin=request.to_json())
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # the summary is the done event
    events = [json.loads(line) for line in r.stderr.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-2:] == ["epoch", "done"], kinds
    start, epoch, done = events[0], events[-2], events[-1]
    assert start["epochs"] == 1 and start["start_epoch"] == 0 and start["grid"] == [1, 2]
    batches = [e for e in events if e["event"] == "progress" and e["stage"] == "train"]
    assert [(e["epoch"], e["done"], e["total"]) for e in batches] == [(1, 1, 2), (1, 2, 2)]
    assert all(e["loss"] > 0 and e["lr"] == 0.008 for e in batches)
    assert any(e["event"] == "progress" and e["stage"] == "validate" for e in events)
    history = json.loads((by_request / "history.json").read_text())
    assert epoch["epoch"] == 1 and epoch["epochs"] == 1 and epoch["best"] is True
    assert epoch["val_loss"] == pytest.approx(history[0]["val_loss"])
    assert done["epochs_run"] == 1 and done["best_epoch"] == 1
    assert done["best"] == str(by_request / "best.pt")
    assert done["summary"].startswith("done after 1 epochs; best.pt: epoch 1, val loss ")
    _same_weights(by_options, by_request)

    geoddu.train_model(run_dir=by_python, data=synthetic, **TINY)
    _same_weights(by_options, by_python)


def test_options_override_the_request_file(synthetic, tmp_path):
    run = tmp_path / "run"
    file = tmp_path / "run.json"
    file.write_text(TrainRequest(run_dir=str(run), data=str(synthetic),
                                 **{**TINY, "epochs": 5}).to_json())
    r = _train("--request", file, "--epochs", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "last.pt")["training"]["epochs_run"] == 1
    # A resume through a request: only the given fields are compared with the run's.
    file.write_text(json.dumps({"run_dir": str(run), "resume": True, "epochs": 2, "lr": 0.01}))
    r = _train("--request", file, "-q")
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "Error: --lr 0.01 conflicts with the run's 0.008; a resumed run keeps its "
        "configuration"]
    r = _train("--request", file, "--lr", "0.008", "-q")
    assert r.returncode == 0, r.stderr
    assert load_checkpoint(run / "last.pt")["training"]["epochs_run"] == 2


def test_bad_requests_are_one_line_and_an_error_event(tmp_path):
    r = _train("--request", "-", stdin='{"run_dir": "x", "epochs": 2}')
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "Error: give --dataset and --data (or --resume to continue a run)"]
    r = _train("--request", "-", "--progress", "json", stdin='{"run_dir": "x", "colour": 1}')
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 2, r.stderr
    assert json.loads(lines[0]) == {"event": "error",
                                    "message": "request: unknown field(s) colour"}
    assert lines[1] == "Error: request: unknown field(s) colour"
    r = _train("--request", "-", "--ranks", "2", stdin='{"run_dir": "x", "resume": true}')
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "Error: --request -: the ranks cannot share stdin; give --request FILE"]
    # Without --request, -o stays required, in click's words (exit 2).
    r = _train("--dataset", "synthetic", "--data", tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "Error: Missing option '-o' / '--output'. (see 'geoddu train --help')"]
    assert os.listdir(tmp_path) == []
