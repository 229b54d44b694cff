"""Spatially-distributed DDU-Net training pieces on real gloo process groups (CPU): the same
logits, loss, gradients and BatchNorm statistics as the single-process DDU-Net."""

from __future__ import annotations

import copy
import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geoddu.engine.spatial import (
    SpatialDDUNet,
    all_reduce_sum,
    average_gradients,
    spatial_dice_loss,
)
from geoddu.metrics import dice_loss
from geoddu.models import create_model
from geoddu.partition import Partition

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


def _equivalence(rank: int, world: int, tmp: str) -> None:
    _init(rank, world, tmp)
    torch.manual_seed(0)
    # No dropout: its masks are drawn per rank, so only the deterministic part can match.
    net = create_model(
        "DDU-Net(2,4,Y)", in_channels=3, num_classes=4, base_channels=4, dropout=0.0
    ).train()
    ref = copy.deepcopy(net)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 48, 48, generator=gen)
    y = torch.randint(0, 4, (2, 48, 48), generator=gen)
    part = Partition.uniform(48, 48, 3, 3, multiple=ref.stride)  # 9 subimages of 16 px

    ref_logits = ref(x, part)
    ref_loss = dice_loss(ref_logits, y)
    ref_loss.backward()

    model = SpatialDDUNet(net)
    logits = model(model.own_parts(x, part), part)
    loss = spatial_dice_loss(logits, model.own_parts(y, part))
    loss.backward()
    average_gradients(model)

    ref_parts = model.own_parts(ref_logits, part)
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
    }
    # Relative to each gradient's size, floored: a conv bias right before a BatchNorm has a
    # true gradient of zero (the mean subtraction cancels it), so its value is pure rounding.
    floor = 1e-3 * max(g.abs().max().item() for g in grads.values())
    for n, p in model.net.named_parameters():
        diff = (p.grad - grads[n]).abs().max().item()
        result["grad_abs"][n] = diff
        result["grad_rel"][n] = diff / max(grads[n].abs().max().item(), floor)
    # all_reduce_sum itself: forward sums, backward sums every rank's upstream gradient.
    v = torch.full((3,), float(rank + 1), dtype=torch.float64, requires_grad=True)
    total = all_reduce_sum(v)
    (total * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    result["all_reduce"] = [total.tolist(), v.grad.tolist()]
    Path(tmp, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 4])
def test_spatial_ddunet_equals_single_process(tmp_path, world):
    """9 subimages over 2, 3, 4 ranks (blocks of 5/4, 3/3/3, 3/2/2/2): forward logits, loss,
    every parameter gradient and the BatchNorm running statistics match within 1e-5."""
    t = time.perf_counter()
    _spawn(_equivalence, world, str(tmp_path))
    print(f"{world} ranks: {time.perf_counter() - t:.1f} s")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    assert sum(r["cells"] for r in results) == 9
    for r in results:
        assert r["logits"] <= 1e-5 and r["loss"] <= 1e-6
        worst = max(r["grad_abs"], key=r["grad_abs"].get)
        assert r["grad_abs"][worst] <= 1e-5, (worst, r["grad_abs"][worst])
        # Relative too: the dice gradients are small, an absolute bound alone proves little.
        worst = max(r["grad_rel"], key=r["grad_rel"].get)
        assert r["grad_rel"][worst] <= 1e-4, (worst, r["grad_rel"][worst])
        assert r["buffers"] <= 1e-5
        assert r["buffer_sums"] == results[0]["buffer_sums"]  # identical on every rank
        assert r["bytes_sent"] > 0
        n = world * (world + 1) / 2
        assert r["all_reduce"] == [[n] * 3, [world * 1.0, world * 2.0, world * 3.0]]


def _stalled_peer(rank: int, world: int, tmp: str) -> None:
    _init(rank, world, tmp, timeout_s=5)
    if rank == 1:
        time.sleep(60)  # a hung rank: alive, never joins the collective
        os._exit(0)
    torch.manual_seed(0)
    net = create_model("DDU-Net(2,4,Y)", in_channels=3, num_classes=4, base_channels=4)
    model = SpatialDDUNet(net.train())
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
