"""Training the subimages as streams (geoddu.train.streams) and the two BatchNorm rules: the
streams compute what the modules' own forward computes on the stacked batch; `--batchnorm
per-subimage` normalises each subimage alone, as the paper's reference code does; spatial
ranks equal one process to the last bit under both rules; the option end to end."""

from __future__ import annotations

import copy
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from geoddu.checkpoint import load_checkpoint
from geoddu.data.synthetic import write
from geoddu.errors import GeodduError
from geoddu.models import create_model
from geoddu.partition import Partition
from geoddu.train import Trainer, TrainMesh, preset, start_training
from geoddu.train.dropout import dropout_masks
from geoddu.train.execution import SubimageTraining
from geoddu.train.run import open_splits

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"base_channels": 4}
ARCH = "DDU-Net(2,8,Y)"


def _model(name: str, dropout: float = 0.0, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"comm_features": 16} if name == "resnet18" else {}
    return create_model(name, in_channels=3, num_classes=4, base_channels=4,
                        dropout=dropout, **options, **kw).train()


def _batch(n: int = 3, h: int = 64, w: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, h, w, generator=gen), torch.randint(0, 4, (n, h, w), generator=gen)


def _stacked(model, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The modules' own forward on one stacked batch of all subimages: torch's BatchNorm over
    the stack is the pooled rule."""
    part = Partition.uniform(*x.shape[-2:], *grid, multiple=model.stride)
    flat = [p for row in part.split(x) for p in row]
    n = x.shape[0]
    skips, bottleneck = model.encode(torch.cat(flat))
    maps = list(model.comm_input(bottleneck).split(n))
    if model.communicates:
        rows, cols = grid
        mosaic = Partition.stitch([maps[i * cols : (i + 1) * cols] for i in range(rows)])
        coarse = Partition.uniform(*mosaic.shape[-2:], rows, cols)
        out = torch.cat([m for row in coarse.split(model.comm(mosaic)) for m in row])
    else:
        out = model.comm(torch.cat(maps))
    logits = list(model.decode(skips, bottleneck, out).split(n))
    cols = grid[1]
    return Partition.stitch([logits[i * cols : (i + 1) * cols] for i in range(grid[0])])


def _shared_masks(model, step):
    """The step's masks on the plain modules' forward (forward hooks; the streams apply the
    same masks themselves): the reference for the streams."""
    hooks = [m.register_forward_hook(lambda mod, args, out: args[0] * step.mask(mod, args[0]))
             for m in step.layers if m.p > 0]
    return hooks


def _step(model, run, x, y, key=(0, 0, 0), training=None):
    with dropout_masks(training or model, key) as step:
        hooks = [] if training is not None else _shared_masks(model, step)
        logits = run(model, x)
        for h in hooks:
            h.remove()
    F.cross_entropy(logits, y).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logits.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("name", ["DDU-Net(2,8,Y)", "DDU-Net(2,8,N)", "resnet18"])
def test_streams_compute_the_stacked_forward(name):
    """The streams, one subimage after another (the CPU's) and stacked (the GPU's), compute the
    function of the plain modules on one stacked batch: logits, every gradient, the running
    statistics and the dropout masks (p = 0.2) agree in float64 to 1e-9, and in float32 the
    streams are as close to that as float32 allows."""
    x, y = _batch()
    grid = (2, 3)

    def run(dtype, execution=None):
        model = _model(name, 0.2).to(dtype)
        if execution is None:
            return _step(model, lambda m, a: _stacked(m, a, grid), x.to(dtype), y)
        training = SubimageTraining(model, execution=execution)
        return _step(model, lambda m, a: training(a, grid), x.to(dtype), y, training=training)

    truth = run(torch.float64)
    floor = 1e-3 * max(g.abs().max().item() for g in truth[1].values())

    def close(got, bound):
        logits, grads, buffers = got
        assert (logits - truth[0]).abs().max().item() <= bound * truth[0].abs().max().item()
        for n, g in grads.items():
            scale = max(truth[1][n].abs().max().item(), floor)
            assert (g.double() - truth[1][n]).abs().max().item() <= bound * scale, n
        for n, b in buffers.items():
            assert (b.double() - truth[2][n].double()).abs().max().item() <= bound, n

    for execution in ("sequential", "stacked"):
        close(run(torch.float64, execution), 1e-9)
        if name != "resnet18":
            # (ResNet's 3x3 max-pool meets windows of equal zeros after a ReLU, where the
            # channels-last kernel of float32 training passes the gradient to another, equally
            # valid, input than the float64 reference.)
            close(run(torch.float32, execution), 1e-4)


def test_per_subimage_normalises_each_subimage_alone():
    """C = N: under the per-subimage rule each subimage's logits are those of the model run on
    that subimage alone (BatchNorm over its own rows), the running statistics move towards the
    mean over the subimages of their batch statistics, and the pooled rule gives other logits."""
    x, y = _batch()
    grid = (2, 2)
    model = _model("DDU-Net(2,8,N)")
    pooled = copy.deepcopy(model)
    logits = SubimageTraining(model, batchnorm="per-subimage")(x, grid)
    part = Partition.uniform(*x.shape[-2:], *grid, multiple=model.stride)
    alone = [copy.deepcopy(pooled) for _ in range(4)]
    expected = Partition.stitch([[SubimageTraining(alone[2 * i + j])(p, (1, 1))
                                  for j, p in enumerate(row)]
                                 for i, row in enumerate(part.split(x))])
    assert (logits - expected).abs().max().item() <= 1e-5
    assert (SubimageTraining(pooled)(x, grid) - logits).abs().max().item() > 1e-2
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            mean = torch.stack([dict(m.named_buffers())[name] for m in alone]).mean(0)
            assert (buffer - mean).abs().max().item() <= 1e-6, name


def test_per_subimage_equals_the_reference_code():
    """C = Y under the per-subimage rule: the logits of the paper's reference DDU-Net
    (geoddu/reference/model.py: a clone per subimage, its communication network over the
    mosaic) in training mode, with the same weights."""
    from geoddu.reference.model import copy_geoddu_weights, reference_for

    x, _ = _batch(2, 64, 64)
    model = _model("DDU-Net(2,8,Y)")
    ref = copy_geoddu_weights(model, reference_for(model, (2, 2))).train()
    training = SubimageTraining(model, batchnorm="per-subimage")
    with torch.no_grad():
        expected = ref.forward_image(x)
        error = (training(x, (2, 2)) - expected).abs().max().item()
    assert error <= 1e-5 * expected.abs().max().item()


def test_per_subimage_is_refused_with_data_parallel_ranks(tmp_path):
    """Data-parallel groups would split each subimage's rows: refused before any collective."""
    data = write(tmp_path / "k2", 2, train=4, val=2, test=1, seed=0)
    train_set, val_set = open_splits("synthetic", data)
    model = create_model(ARCH, in_channels=1, num_classes=3, **TINY)
    config = preset("synthetic", batchnorm="per-subimage", batch_size=4)
    with pytest.raises(GeodduError, match="per-subimage.*--spatial-ranks 2"):
        Trainer(model, train_set, val_set, tmp_path / "run", config,
                mesh=TrainMesh(data_size=2, spatial_size=1))
    with pytest.raises(GeodduError, match="unknown BatchNorm rule"):
        preset("synthetic", batchnorm="none")


def _two_runs(rank: int, world: int, tmp: str, data: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank,
                            world_size=world, timeout=timedelta(seconds=60))
    mesh = TrainMesh.create(world)
    for rule in ("pooled", "per-subimage"):
        result = start_training("synthetic", data, Path(tmp, rule),
                                preset("synthetic", epochs=1, batch_size=5, dropout=0.1,
                                       seed=3, batchnorm=rule), arch=ARCH, model_options=TINY,
                                mesh=mesh)
        torch.save(result.model.state_dict(), Path(tmp, f"{rule}{rank}.pt"))
    dist.destroy_process_group()


def test_spatial_ranks_equal_one_process_to_the_bit(tmp_path):
    """An epoch on 2 spatial ranks (augmentation, dropout 0.1, a short last batch) ends with
    exactly the weights and running statistics of one process, under either rule."""
    data = write(tmp_path / "k2", 2, train=12, val=4, test=1, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.start_processes(_two_runs, args=(2, tmp, str(data)), nprocs=2, join=False,
                                 start_method="spawn")
        end = time.monotonic() + 150
        while not ctx.join(timeout=0.5):
            assert time.monotonic() < end, "the ranks did not finish"
        ranks = {rule: torch.load(Path(tmp, f"{rule}0.pt"), weights_only=True)
                 for rule in ("pooled", "per-subimage")}
    for rule, state in ranks.items():
        single = start_training("synthetic", data, tmp_path / rule,
                                preset("synthetic", epochs=1, batch_size=5, dropout=0.1, seed=3,
                                       batchnorm=rule), arch=ARCH, model_options=TINY)
        for name, value in single.model.state_dict().items():
            assert torch.equal(state[name], value), (rule, name)
    assert not torch.equal(ranks["pooled"]["encoder.inc.0.weight"],
                           ranks["per-subimage"]["encoder.inc.0.weight"])


def _geoddu(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoddu.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_batchnorm_option_end_to_end(tmp_path):
    """`geoddu train --batchnorm per-subimage` trains, records the rule in the checkpoint's
    training record, and a resume that asks for the other rule is refused in one line."""
    data = write(tmp_path / "k2", 2, train=6, val=2, test=1, seed=0)
    run = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--data", data, "-o", run, "--arch", ARCH,
            "--base-channels", "4", "--batch-size", "3", "--epochs", "1"]
    r = _geoddu(*args, "--batchnorm", "per-subimage", "--quiet")
    assert r.returncode == 0, r.stderr
    record = load_checkpoint(run / "last.pt")["training"]
    assert record["config"]["batchnorm"] == "per-subimage"
    r = _geoddu(*args, "--batchnorm", "pooled", "--resume", "--epochs", "2")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "--batchnorm pooled conflicts with the run" in lines[0] and "per-subimage" in lines[0]
