"""DDU-Net training over ranks on real gloo process groups (CPU): the pieces (logits, loss,
gradients and BatchNorm statistics equal the single-process DDU-Net on spatial, data and
data x spatial meshes) and whole training runs (weights equal on every rank and to one
process; `geoddu train` under torchrun, --resume, a killed rank)."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import TORCHRUN, rank_env, rank_pid

from geoddu.checkpoint import load_checkpoint
from geoddu.data.synthetic import write
from geoddu.metrics import dice_loss
from geoddu.models import create_model
from geoddu.parallel.collectives import all_reduce_sum
from geoddu.partition import Partition
from geoddu.train import Callbacks, TrainMesh, preset, start_training
from geoddu.train.dropout import dropout_masks
from geoddu.train.execution import SubimageTraining
from geoddu.train.losses import get_loss
from geoddu.train.spatial import SpatialTraining, average_gradients

DEADLINE = 150  # seconds for a whole group of ranks; a hang fails the test


def _spawn(fn, world: int, *args, until_rank0: bool = False) -> None:
    """Run fn(rank, world, *args) in `world` processes; with `until_rank0`, stop the others
    once rank 0 is done (they may be hung on purpose)."""
    ctx = mp.start_processes(
        fn, args=(world, *args), nprocs=world, join=False, start_method="spawn"
    )
    end = time.monotonic() + DEADLINE
    try:
        while not ctx.join(timeout=0.5):
            if until_rank0 and not ctx.processes[0].is_alive():
                break
            if time.monotonic() > end:
                pytest.fail(f"{world} ranks did not finish within {DEADLINE} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _init(rank: int, world: int, tmp: str, timeout_s: float = 60) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{tmp}/rendezvous",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )


def _equivalence(
    rank: int, world: int, tmp: str, spatial: int, loss_name: str, dropout: float = 0.0
) -> None:
    _init(rank, world, tmp)
    mesh = TrainMesh.create(spatial)
    torch.manual_seed(0)
    # Dropout as the trainer runs it: masks drawn for one process's whole batch from a
    # generator keyed by (seed, epoch, step), each rank keeping the rows it holds.
    net = create_model(
        "DDU-Net(2,4,Y)", in_channels=3, num_classes=4, base_channels=4, dropout=dropout
    ).train()
    key = (3, 1, 2)
    ref = copy.deepcopy(net)
    undropped = copy.deepcopy(net)
    for m in undropped.modules():
        if isinstance(m, torch.nn.Dropout2d):
            m.p = 0.0
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 48, 48, generator=gen)
    y = torch.randint(0, 4, (4, 48, 48), generator=gen)
    part = Partition.uniform(48, 48, 3, 3, multiple=ref.stride)  # 9 subimages of 16 px
    loss_fn = get_loss(loss_name)
    if loss_name == "dice":  # the trainer's Eq. (1) is the metric's
        with torch.no_grad():
            check = SubimageTraining(copy.deepcopy(ref))(x, part)
        assert abs(float(loss_fn(check, y)) - float(dice_loss(check, y))) < 1e-6

    with dropout_masks(ref, key):
        ref_logits = SubimageTraining(ref)(x, part)
    with torch.no_grad():
        dropped = (SubimageTraining(undropped)(x, part) - ref_logits).abs().max().item()
    ref_loss = loss_fn(ref_logits, y)
    ref_loss.backward()

    # What the trainer builds: the data rank's patches, the spatial rank's subimages.
    model = SpatialTraining(net, group=mesh.spatial_group, bn_group=mesh.world_group,
                            data_group=mesh.data_group if mesh.data_size > 1 else None)
    mine = mesh.share(x.shape[0])
    with dropout_masks(model, key, model.batch_rows(part, mine, x.shape[0])):
        logits = model(model.own_parts(x[mine], part), part)
    loss = loss_fn(logits, model.own_parts(y[mine], part), reduce=mesh.reduce_sum())
    loss.backward()
    average_gradients(model, mesh.world_group)

    ref_parts = model.own_parts(ref_logits[mine], part)
    grads = {n: p.grad for n, p in ref.named_parameters()}
    buffers = dict(ref.named_buffers())
    result = {
        "cells": len(logits),
        "logits": max((a - b).abs().max().item() for a, b in zip(logits, ref_parts, strict=True)),
        "loss": abs(loss.item() - ref_loss.item()),
        "grad_abs": {},
        "grad_rel": {},
        "buffers": max(
            (b.float() - buffers[n].float()).abs().max().item()
            for n, b in model.net.named_buffers()
        ),
        "buffer_sums": [b.double().sum().item() for _, b in model.net.named_buffers()],
        "bytes_sent": model.bytes_sent,
        "dropped": dropped,
    }
    # Relative to each gradient's size, floored: a conv bias right before a BatchNorm has a
    # true gradient of zero (the mean subtraction cancels it), so its value is pure rounding.
    floor = 1e-3 * max(g.abs().max().item() for g in grads.values())
    for n, p in model.net.named_parameters():
        diff = (p.grad - grads[n]).abs().max().item()
        result["grad_abs"][n] = diff
        result["grad_rel"][n] = diff / max(grads[n].abs().max().item(), floor)
    result["params"] = [p.double().sum().item() for p in model.net.parameters()]
    # all_reduce_sum itself: forward sums, backward sums every rank's upstream gradient.
    v = torch.full((3,), float(rank + 1), dtype=torch.float64, requires_grad=True)
    total = all_reduce_sum(v)
    (total * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    result["all_reduce"] = [total.tolist(), v.grad.tolist()]
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _assert_equals_one_process(r: dict, first: dict) -> None:
    """One rank's figures against one process: logits, loss, every gradient (absolute and, as
    the dice gradients are small, relative), BatchNorm statistics; identical on every rank."""
    assert r["logits"] <= 1e-5 and r["loss"] <= 1e-6
    worst = max(r["grad_abs"], key=r["grad_abs"].get)
    assert r["grad_abs"][worst] <= 1e-5, (worst, r["grad_abs"][worst])
    worst = max(r["grad_rel"], key=r["grad_rel"].get)
    assert r["grad_rel"][worst] <= 1e-4, (worst, r["grad_rel"][worst])
    assert r["buffers"] <= 1e-5
    assert r["buffer_sums"] == first["buffer_sums"]  # identical on every rank
    assert r["params"] == first["params"]


@pytest.mark.parametrize(
    ("world", "spatial", "loss_name"),
    [(2, 2, "dice"), (4, 4, "class-dice"), (4, 2, "class-dice")],
    ids=["spatial2", "spatial4", "data2xspatial2"],
)
def test_spatial_ddunet_equals_single_process(tmp_path, world, spatial, loss_name):
    """4 patches of 9 subimages over 2 or 4 spatial ranks (blocks of 5/4, 3/2/2/2), and over a
    2 x 2 data x spatial mesh (2 patches per data group): forward logits, loss, every parameter
    gradient and the BatchNorm running statistics match one process within 1e-5."""
    t = time.perf_counter()
    _spawn(_equivalence, world, str(tmp_path), spatial, loss_name)
    print(f"{world} ranks ({spatial} spatial): {time.perf_counter() - t:.1f} s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert sum(r["cells"] for r in results) == 9 * world // spatial
    for r in results:
        _assert_equals_one_process(r, results[0])
        assert r["bytes_sent"] > 0
        n = world * (world + 1) / 2
        assert r["all_reduce"] == [[n] * 3, [world * 1.0, world * 2.0, world * 3.0]]


def test_spatial_dropout_equals_single_process(tmp_path):
    """Dropout 0.1 (the default recipe's): 4 patches of 9 subimages over 2 spatial ranks draw
    the masks one process draws (every dropout layer, the communication network's on the
    mosaic included), so logits, loss, gradients and BatchNorm statistics still match one
    process within the bounds of the test without dropout, and dropout did change them."""
    _spawn(_equivalence, 2, str(tmp_path), 2, "dice", 0.1)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert sum(r["cells"] for r in results) == 9
    for r in results:
        assert r["dropped"] > 1e-3  # the masks dropped something
        _assert_equals_one_process(r, results[0])


def _stalled_peer(rank: int, world: int, tmp: str) -> None:
    _init(rank, world, tmp, timeout_s=5)
    if rank == 1:
        time.sleep(60)  # a hung rank: alive, never joins the collective
        os._exit(0)
    torch.manual_seed(0)
    net = create_model("DDU-Net(2,4,Y)", in_channels=3, num_classes=4, base_channels=4)
    model = SpatialTraining(net.train())
    part = Partition.uniform(32, 32, 2, 2, multiple=4)
    x = torch.randn(1, 3, 32, 32)
    t = time.monotonic()
    try:
        model(model.own_parts(x, part), part)
        message = "no error"
    except Exception as exc:  # noqa: BLE001 - the message is what the test checks
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    Path(tmp, "rank0.json").write_text(json.dumps([message, time.monotonic() - t]))
    os._exit(0)  # without destroy: the peer is gone


def test_a_hung_rank_raises_within_the_timeout(tmp_path):
    _spawn(_stalled_peer, 2, str(tmp_path), until_rank0=True)
    message, took = json.loads((tmp_path / "rank0.json").read_text())
    assert "imed out" in message or "timeout" in message.lower(), message
    assert took < 30


# -- whole training runs ----------------------------------------------------------------------
TRAIN = {"epochs": 2, "batch_size": 5, "augment": True, "dropout": 0.0, "seed": 3}
ARCH, TINY = "DDU-Net(2,8,Y)", {"base_channels": 4}
CLI_ARGS = ["--dataset", "synthetic", "--arch", ARCH, "--base-channels", "4", "--batch-size",
            "5", "--augment", "--dropout", "0", "--seed", "3", "--timeout", "60"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    # 12 training images in batches of 5: the last batch (2 images) leaves two of four data
    # groups empty. (A last batch of one image is legal too, but its step amplifies float noise
    # enough that two runs drift apart by 1e-2 within two epochs, in one process or many.)
    return write(tmp_path_factory.mktemp("data") / "k2", 2, train=12, val=5, test=1, seed=0)


@pytest.fixture(scope="module")
def single_run(synthetic, tmp_path_factory):
    """The reference: the same run in one process."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("single") / "run"
    return start_training("synthetic", synthetic, run, preset("synthetic", **TRAIN), arch=ARCH,
                          model_options=TINY)


def _noise_only(model: torch.nn.Module) -> set[str]:
    """Conv biases right before a BatchNorm, and that BatchNorm's running mean.

    In exact arithmetic such a bias has zero gradient (the mean subtraction cancels it), so
    what it gets is rounding noise that differs with the summation order, and Adam turns any
    noise into steps of size lr. The communication network's convolutions (the paper's
    parameter counts include their biases) are the ones like that.
    """
    names = set()
    for prefix, m in model.named_modules():
        children = list(m.named_children())
        for (a, conv), (b, bn) in zip(children, children[1:], strict=False):
            if isinstance(conv, torch.nn.Conv2d) and conv.bias is not None \
                    and isinstance(bn, torch.nn.BatchNorm2d):
                head = f"{prefix}." if prefix else ""
                names |= {f"{head}{a}.bias", f"{head}{b}.running_mean"}
    return names


def _assert_same_run(state: dict, reference: dict, noise: set[str]) -> None:
    assert state.keys() == reference.keys()
    for name, ref in reference.items():
        if name in noise or not ref.is_floating_point():
            continue
        diff = (state[name].double() - ref.double()).abs().max().item()
        assert diff <= 1e-4, (name, diff)


def _train_rank(
    rank: int, world: int, tmp: str, spatial: int, data: str, overrides: dict | None = None
) -> None:
    _init(rank, world, tmp)
    mesh = TrainMesh.create(spatial)
    losses: list[float] = []
    result = start_training("synthetic", data, Path(tmp, "run"),
                            preset("synthetic", **{**TRAIN, **(overrides or {})}), arch=ARCH,
                            model_options=TINY, mesh=mesh,
                            callbacks=Callbacks(on_batch=lambda *a: losses.append(a[3])))
    torch.save({"state": result.model.state_dict(), "history": result.history, "losses": losses},
               Path(tmp, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("world", "spatial"), [(2, 2), (4, 2), (4, 1)], ids=["spatial2", "data2xspatial2", "data4"]
)
def test_training_run_equals_one_process(tmp_path, synthetic, single_run, world, spatial):
    """Two epochs (augmentation on, a short last batch) under 2 spatial ranks, a 2 x 2 mesh and
    4 data-parallel ranks: the same losses as one process, weights identical on every rank and
    equal to one process up to float noise; only rank 0 wrote the run."""
    t = time.perf_counter()
    _spawn(_train_rank, world, str(tmp_path), spatial, str(synthetic))
    print(f"{world} ranks: {time.perf_counter() - t:.1f} s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world)]
    for r in ranks[1:]:
        for name, value in ranks[0]["state"].items():
            assert torch.equal(r["state"][name], value), name
    single = single_run.model.state_dict()
    _assert_same_run(ranks[0]["state"], single, _noise_only(single_run.model))
    for got, want in zip(ranks[0]["history"], single_run.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
        assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-5)
    written = load_checkpoint(tmp_path / "run" / "last.pt")
    assert written["training"]["mesh"] == {"data": world // spatial, "spatial": spatial}
    _assert_same_run(written["state_dict"], single, set(_noise_only(single_run.model)))
    # The test split, evaluated by all ranks together after the last epoch: one process's
    # figures (ranks without a test batch add nothing).
    test = load_checkpoint(tmp_path / "run" / "best.pt")["card"]["test"]
    assert test["evaluated"] and test["pixels"] == single_run.test["pixels"] > 0
    assert test["epoch"] == single_run.test["epoch"]
    assert test["miou"] == pytest.approx(single_run.test["miou"], abs=1e-4)


def test_training_run_with_dropout_equals_one_process(tmp_path, synthetic, single_run):
    """An epoch with dropout 0.1 under 2 spatial ranks: the trainer keys each step's masks by
    (seed, epoch, step), so every batch's loss is the one-process loss and the weights are the
    same on both ranks. (One epoch: with dropout this tiny model amplifies float noise so much
    that one process run on 1 and on 2 threads drifts apart by 1e-2 within two epochs.)"""
    overrides = {"dropout": 0.1, "epochs": 1}
    losses: list[float] = []
    single = start_training("synthetic", synthetic, tmp_path / "single",
                            preset("synthetic", **{**TRAIN, **overrides}), arch=ARCH,
                            model_options=TINY,
                            callbacks=Callbacks(on_batch=lambda *a: losses.append(a[3])))
    _spawn(_train_rank, 2, str(tmp_path), 2, str(synthetic), overrides)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0]["state"].items():
        assert torch.equal(ranks[1]["state"][name], value), name
    # Every batch's loss (the first two equal to the bit here; the third, after two Adam
    # steps, within float noise), and the validation after the epoch.
    assert len(ranks[0]["losses"]) == len(losses) == 3
    assert ranks[0]["losses"] == pytest.approx(losses, abs=1e-5)
    got, want = ranks[0]["history"][0], single.history[0]
    assert got["val_loss"] == pytest.approx(want["val_loss"], abs=1e-5)
    # Other masks would change the losses far more than that: no dropout moves the epoch's
    # mean loss by 5e-3.
    assert abs(want["train_loss"] - single_run.history[0]["train_loss"]) > 1e-3


def _geoddu(*args: object, ranks: int | None = None) -> subprocess.CompletedProcess:
    launcher = [*TORCHRUN, "--nproc-per-node", str(ranks)] if ranks else [sys.executable]
    return subprocess.run([*launcher, "-m", "geoddu.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=DEADLINE, env=rank_env())


def test_train_command_under_torchrun_and_resume(tmp_path, synthetic, single_run):
    """`geoddu train` under torchrun (2 spatial ranks) for one epoch, then `--resume --ranks 2`
    for the second: the run one process makes in two epochs."""
    run = tmp_path / "run"
    r = _geoddu("train", *CLI_ARGS, "--data", synthetic, "-o", run, "--epochs", "1",
                "--spatial-ranks", "2", ranks=2)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("done after 1 epochs") == 1  # rank 0 alone reports
    assert "2 ranks (1 data x 2 spatial)" in r.stderr
    r = _geoddu("train", "-o", run, "--resume", "--epochs", "2", "--ranks", "2", "-q")
    assert r.returncode == 0, r.stderr
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["training"]["epochs_run"] == 2
    assert ckpt["training"]["mesh"] == {"data": 2, "spatial": 1}  # resumed as plain data parallel
    history = json.loads((run / "history.json").read_text())
    for got, want in zip(history, single_run.history, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
    _assert_same_run(ckpt["state_dict"], single_run.model.state_dict(),
                     _noise_only(single_run.model))
    # Bad layouts are one line from rank 0, non-zero exit.
    r = _geoddu("train", *CLI_ARGS, "--data", synthetic, "-o", tmp_path / "bad",
                "--spatial-ranks", "3", ranks=2)
    assert r.returncode != 0
    assert r.stderr.count("Error: --spatial-ranks 3 does not divide the 2 ranks") == 1, r.stderr
    r = _geoddu("train", *CLI_ARGS, "--data", synthetic, "-o", tmp_path / "bad",
                "--spatial-ranks", "2")
    assert r.returncode == 1 and r.stderr.startswith("Error: --spatial-ranks needs several")
    r = _geoddu("train", *CLI_ARGS, "--data", synthetic, "-o", tmp_path / "bad", "--gpus", "2")
    if not torch.cuda.is_available():
        assert r.returncode == 1 and "--gpus 2: this host has 0 CUDA device(s)" in r.stderr


def test_killing_a_training_rank_ends_the_job(tmp_path, synthetic):
    """A rank killed mid-run ends the job with a non-zero exit within a bounded time; the last
    checkpoint written before stays intact."""
    run = tmp_path / "run"
    cmd = [*TORCHRUN, "--nproc-per-node", "2", "-m", "geoddu.cli", "train", *CLI_ARGS, "--data",
           str(synthetic), "-o", str(run), "--epochs", "500", "--min-epochs", "500",
           "--spatial-ranks", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=rank_env())
    try:
        end = time.monotonic() + DEADLINE
        while not (run / "history.json").exists():
            assert proc.poll() is None and time.monotonic() < end, proc.stdout.read()
            time.sleep(0.2)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, _ = proc.communicate(timeout=90)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    print(f"job ended {took:.1f} s after the kill, exit {proc.returncode}")
    assert proc.returncode != 0 and took < 60
    assert "Signal 9 (SIGKILL)" in out or "failed" in out.lower(), out
    ckpt = load_checkpoint(run / "last.pt")  # whole, loadable with weights_only
    assert 1 <= ckpt["training"]["epochs_run"] < 500
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]
