"""Distributed DDU-Net on CPU with gloo: training step time and traffic, segment throughput.

1. Forward + backward of one global patch (default 1024^2, 4 x 4 subimages, DDU-Net(4,64,Y))
   with the patch's subimages spread over 1, 2 and 4 ranks (`geoddu.train.spatial`), and the
   bytes each rank sends per step: the F gathered maps (all-gather, and the reduce-scatter of
   their gradients), the BatchNorm sums, the Dice sums, and the gradient all-reduce (as DDP).
   For comparison: what a halo-exchange U-Net (margins exchanged before every 3x3 conv, forward
   and backward; the Sec. II-B scheme) would send for the same patch and the same blocks, and
   what the segment engine's halo-only exchange sends (inference: forward only).
   Also the two placements of the communication network: the shipped one (F maps gathered on
   the first rank of the patch, the network run there, its output scattered back) against an
   autograd all-gather with the network run on every rank (`replicated_communication`).
2. `geoddu segment` of one scene under 1, 2 and 4 ranks (torchrun), checked identical.

Every rank runs `--threads-per-rank` threads (default 1): on a small shared machine, OpenMP
threads competing for busy cores slow a step down by an order of magnitude, which would hide
everything else. More ranks than cores measure overhead, not speed-up.

    python benchmarks/distributed_scaling.py [--ranks 1 2 4] [--steps 2] [--scene 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))


THREADS = {"per_rank": 1}


def _threads(world: int) -> int:
    return THREADS["per_rank"]


# -- 1. training step -------------------------------------------------------------------------
def replicated_communication(model):
    """`model` (a SpatialTraining) with the other placement of the communication network: an
    autograd all-gather of the F maps (backward: reduce-scatter) and the network run on the
    whole mosaic on every rank, each keeping its own cells."""
    import torch.distributed._functional_collectives as fcol
    import torch.nn.functional as F

    from geoddu.partition import Partition, balanced_blocks

    def communicate(streams, fn, maps, partition, own):
        net, world, stride = model.net, model.world, model.net.stride
        batch, feats = maps[0].shape[0], net.comm_features
        blocks = balanced_blocks(partition.subimages(), world)
        size = {c.index: batch * feats * (c.height // stride) * (c.width // stride)
                for b in blocks for c in b}
        chunk = max(sum(size[c.index] for c in b) for b in blocks)
        flat = torch.cat([m.reshape(-1) for m in maps])
        flat = F.pad(flat, (0, chunk - flat.numel()))
        gathered = fcol.all_gather_single_autograd(flat, 0, dist.group.WORLD)
        model.bytes_sent += 2 * (world - 1) * chunk * flat.element_size()
        cells = {}
        for r, b in enumerate(blocks):
            off = r * chunk
            for c in b:
                h, w = c.height // stride, c.width // stride
                cells[c.index] = gathered[off : off + size[c.index]].view(batch, feats, h, w)
                off += size[c.index]
        rows, cols = partition.grid
        out = streams.alone(
            fn, Partition.stitch([[cells[(i, j)] for j in range(cols)] for i in range(rows)]))
        coarse = partition.scaled(stride)
        ro, co = coarse.row_offsets, coarse.col_offsets
        return [out[..., ro[c.row] : ro[c.row] + c.height // stride,
                    co[c.col] : co[c.col] + c.width // stride] for c in own]

    model._communicate = communicate
    return model


def train_worker(rank: int, world: int, cfg: dict, rdv: str, out: str) -> None:
    from functools import partial

    from geoddu.models import create_model
    from geoddu.parallel.collectives import all_reduce_sum
    from geoddu.partition import Partition
    from geoddu.train.execution import SubimageTraining
    from geoddu.train.losses import get_loss
    from geoddu.train.spatial import SpatialTraining, average_gradients

    dice_loss = get_loss("dice")

    torch.set_num_threads(cfg["threads"])
    if world > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"file://{rdv}",
            rank=rank,
            world_size=world,
            timeout=timedelta(seconds=1800),
        )
    torch.manual_seed(0)
    # No dropout: its masks depend on which rank runs what, and the two placements of the
    # communication network are checked to give the same loss and gradients.
    net = create_model(cfg["model"], num_classes=3, base_channels=cfg["base"],
                       dropout=0.0).train()
    size, grid = cfg["patch"], cfg["grid"]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, size, size, generator=gen)
    y = torch.randint(0, 3, (1, size, size), generator=gen)
    part = Partition.uniform(size, size, grid, grid, multiple=net.stride)
    bn_bytes = [0]
    if world == 1:

        model = SubimageTraining(net)

        def step() -> float:
            net.zero_grad()
            loss = dice_loss(model(x, part), y)
            loss.backward()
            return float(loss.detach())

    else:
        model = SpatialTraining(net)
        if cfg.get("comm_on") == "all":
            replicated_communication(model)
        parts = [p.contiguous() for p in model.own_parts(x, part)]
        targets = [t.contiguous() for t in model.own_parts(y, part)]
        # Each BatchNorm layer whose statistics span ranks all-reduces 2C+1 float64 sums, and
        # their gradients backward: a ring sends 2 (world - 1) / world of them each time.
        bn_bytes[0] = int(sum(2 * 2 * (world - 1) / world * (2 * m.num_features + 1) * 8
                              for m in net.modules()
                              if isinstance(m, torch.nn.BatchNorm2d)
                              and model.group_of(m) is not None))

        def step() -> float:
            model.zero_grad()
            loss = dice_loss(model(parts, part), targets, reduce=partial(all_reduce_sum))
            loss.backward()
            average_gradients(model, model.group)
            return float(loss.detach())

    loss = step()  # warm-up
    times = []
    for _ in range(cfg["steps"]):
        if world > 1:
            dist.barrier()
        t = time.perf_counter()
        step()
        if world > 1:
            dist.barrier()
        times.append(time.perf_counter() - t)
    params = sum(p.numel() * 4 for p in net.parameters())
    res = {
        "seconds": float(np.median(times)),
        "fmaps": getattr(model, "bytes_sent", 0),
        "bn": bn_bytes[0],
        "dice": 2 * (world - 1) * 3 * 8,
        "grads": int(2 * (world - 1) / world * params),
        "threads": torch.get_num_threads(),
        "loss": loss,
        "grad_norm": float(sum(p.grad.double().square().sum() for p in net.parameters()) ** 0.5),
    }
    res["comm_ms"] = 0.0
    if world > 1:
        # The communication stage alone (gather, network, split; and its backward), repeated:
        # the whole step's noise on a shared machine is larger than this stage.
        stride, feats = net.stride, net.comm_features
        own = model.own_cells(part)
        maps = [torch.randn(1, feats, c.height // stride, c.width // stride, requires_grad=True)
                for c in own]
        stage = []
        for _ in range(cfg["comm_reps"]):
            dist.barrier()
            t = time.perf_counter()
            streams = model.streams(part.grid, len(own))
            comm_out = model._communicate(streams, net.communicate, maps, part, own)
            sum(o.square().sum() for o in comm_out).backward()
            dist.barrier()
            stage.append(time.perf_counter() - t)
        res["comm_ms"] = 1000 * float(np.median(stage))
    if world == 1:
        res.update(bn=0, dice=0, grads=0)
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    if world > 1:
        dist.destroy_process_group()


def run_train(world: int, cfg: dict, work: Path) -> dict:
    rdv, out = work / f"rdv{world}-{time.time_ns()}", work / f"train{world}.json"
    ctx = mp.start_processes(
        train_worker,
        args=(world, cfg, str(rdv), str(out)),
        nprocs=world,
        join=False,
        start_method="spawn",
    )
    while not ctx.join(timeout=1):
        pass
    return json.loads(out.read_text())


def unet_halo_bytes(cfg: dict, world: int) -> int:
    """Most bytes one rank sends per step if a plain U-Net exchanged 1-px margins (and their
    gradients, backward) with its neighbours before every 3x3 conv, same blocks of subimages."""
    from geoddu.models import create_model
    from geoddu.partition import Partition, balanced_blocks

    depth = int(re.findall(r"\d+", cfg["model"])[0])
    unet = create_model(f"U-Net({depth})", num_classes=3, base_channels=cfg["base"]).to("meta")
    shapes: list[tuple[int, int]] = []
    for m in unet.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3):
            m.register_forward_hook(lambda m, i, o: shapes.append((i[0].shape[1], i[0].shape[2])))
    size, grid = cfg["patch"], cfg["grid"]
    unet(torch.empty(1, 3, size, size, device="meta"))
    owner = np.zeros((grid, grid), int)
    part = Partition.uniform(size, size, grid, grid)
    for r, block in enumerate(balanced_blocks(part.subimages(), world)):
        for c in block:
            owner[c.index] = r
    worst = 0
    for r in range(world):
        values = 0
        for channels, res in shapes:
            side = res // grid
            for i, j in np.argwhere(owner == r):
                for di in (-1, 0, 1):
                    for dj in (-1, 0, 1):
                        a, b = i + di, j + dj
                        if (di or dj) and 0 <= a < grid and 0 <= b < grid and owner[a, b] != r:
                            values += channels * (side if di == 0 or dj == 0 else 1)
        worst = max(worst, 2 * values * 4)  # margins forward, their gradients backward
    return worst


def ddunet_halo_bytes(cfg: dict, world: int) -> int:
    """Most bytes one rank sends in the segment engine's halo exchange (forward only)."""
    from geoddu.models import create_model
    from geoddu.parallel.halo import halo_plan
    from geoddu.partition import Partition, balanced_blocks

    net = create_model(cfg["model"], num_classes=3, base_channels=cfg["base"])
    size, grid = cfg["patch"], cfg["grid"]
    part = Partition.uniform(size, size, grid, grid)
    owner = np.zeros((grid, grid), np.int32)
    for r, block in enumerate(balanced_blocks(part.subimages(), world)):
        for c in block:
            owner[c.index] = r
    cell = size // grid // net.stride
    sent = [
        sum(halo_plan(owner, r, cell, net.comm_halo).values("send").values()) for r in range(world)
    ]
    return max(sent) * net.comm_features * 4


# -- 2. segment throughput --------------------------------------------------------------------
def run_segment(world: int, scene: Path, ckpt: Path, out: Path) -> tuple[float, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(_threads(world))}
    args = ["segment", str(scene), "-o", str(out), "-m", str(ckpt), "--overwrite"]
    if world == 1:
        cmd = [sys.executable, "-m", "geoddu.cli", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            str(world),
            "-m",
            "geoddu.cli",
            *args,
        ]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    engine = float(re.search(r"; ([\d.]+) s, [\d.]+ Mpx/s", r.stdout).group(1))
    return wall, engine


def main() -> None:
    from _common import add_model_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4])
    add_model_options(ap)
    ap.add_argument("--patch", type=int, default=1024)
    ap.add_argument("--grid", type=int, default=4, help="subimages per side of the patch")
    ap.add_argument("--steps", type=int, default=2, help="timed steps (after one warm-up)")
    ap.add_argument("--scene", type=int, default=2048, help="side of the segment scene")
    ap.add_argument("--threads-per-rank", type=int, default=1)
    ap.add_argument("--comm-reps", type=int, default=20,
                    help="repetitions of the communication stage alone")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-segment", action="store_true")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-dist-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model": args.model,
        "base": args.base_channels,
        "patch": args.patch,
        "grid": args.grid,
        "steps": args.steps,
        "threads": args.threads_per_rank,
        "comm_reps": args.comm_reps,
    }
    THREADS["per_rank"] = args.threads_per_rank
    print(
        f"{os.cpu_count()} CPU cores on this machine, shared by all ranks (gloo, CPU); "
        f"torch {torch.__version__}"
    )
    mb = 2**20
    if not args.skip_train:
        print(
            f"\nTraining step: {args.model}, base {args.base_channels}, one {args.patch}^2 "
            f"patch in {args.grid} x {args.grid} subimages"
        )
        print(
            "| ranks | threads/rank | fwd+bwd s/patch | F maps MB | BN sums KB | Dice B "
            "| grad all-reduce MB | halo U-Net MB | DDU-Net halo-only (inference) MB "
            "| comm on every rank: s/patch, F maps MB, same loss/grads; comm stage |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        for world in args.ranks:
            r = run_train(world, cfg, work)
            unet = unet_halo_bytes(cfg, world) if world > 1 else 0
            halo = ddunet_halo_bytes(cfg, world) if world > 1 else 0
            root = "-"
            if world > 1:
                q = run_train(world, {**cfg, "comm_on": "all"}, work)
                same = (abs(q["loss"] - r["loss"]) < 1e-6
                        and abs(q["grad_norm"] - r["grad_norm"]) < 1e-6 * r["grad_norm"])
                root = (f"{q['seconds']:.2f}, {q['fmaps'] / mb:.2f}, "
                        f"{'yes' if same else 'NO'}; comm stage {r['comm_ms']:.0f} ms (rank 0 "
                        f"+ scatter) vs {q['comm_ms']:.0f} ms (every rank)")
            print(
                f"| {world} | {r['threads']} | {r['seconds']:.2f} | {r['fmaps'] / mb:.2f} | "
                f"{r['bn'] / 1024:.1f} | {r['dice']} | {r['grads'] / mb:.2f} | "
                f"{unet / mb:.1f} | {halo / mb:.3f} | {root} |",
                flush=True,
            )
    if not args.skip_segment:
        from _common import make_checkpoint, make_scene

        scene = make_scene(work / f"scene_{args.scene}.tif", args.scene)
        ckpt = make_checkpoint(
            work / "model.pt", args.model, args.base_channels, args.subimage_size
        )
        print(
            f"\nSegment: {args.scene}^2 scene, {args.model} base {args.base_channels}, "
            f"subimages {args.subimage_size}^2 (wall includes process start-up)"
        )
        print("| ranks | threads/rank | wall s | engine s | Mpx/s (engine) | same classes as 1 |")
        print("|---|---|---|---|---|---|")
        import rasterio

        ref = None
        for world in args.ranks:
            out = work / f"seg{world}.tif"
            wall, engine = run_segment(world, scene, ckpt, out)
            with rasterio.open(out) as src:
                classes = src.read(1)
            ref = classes if ref is None else ref
            same = "yes" if np.array_equal(classes, ref) else "NO"
            print(
                f"| {world} | {_threads(world)} | {wall:.1f} | {engine:.1f} | "
                f"{args.scene**2 / 1e6 / engine:.2f} | {same} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
