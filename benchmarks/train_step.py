"""One training step of geoddu against the paper's reference code, same weights, same batch.

Both sides train DDU-Net(D, F, Y) on the same batch of global patches cut into P x P
subimages, from the same weights (`geoddu.reference.model.copy_geoddu_weights`), with the same loss
(pixel-wise cross-entropy, mean over the batch: neither side's Dice, which differ, see
docs/training.md) and the same optimiser step (Adam, lr 1e-3):

* geoddu: the step of `geoddu.train.Trainer` (training mode, dropout masks keyed by the step,
  `forward_subimages` with the loss over the subimages, backward, Adam). Its subimages run as
  `geoddu.train.streams` picks for the device (or `--sides geoddu:stacked` etc.).
* reference: the step of the reference's `train_deepglobe_resnet_unet.py` on one device: one
  encoder-decoder clone per subimage run one after another, the gradients of clones 1.. added
  into clone 0, Adam on clone 0's parameters, clone 0's state copied into the others.

A side ending in `@bf16` runs its forward under `torch.autocast("cpu", torch.bfloat16)`
(float32 master weights, as `geoddu train --precision bf16` does): `--sides geoddu@bf16 geoddu
reference` adds the ratios bf16/fp32 (against the same side in float32) and bf16/reference.

Each side runs in its own process; their steps alternate (`--steps` timed steps each after
`--warmup`), so both see the same machine. Printed per grid: median (and min) seconds per step,
peak RSS and the ratio of the medians. Defaults: the setting of issue 16 (2 images of
1024 x 1024 px, DDU-Net(4,64,Y), base 16, 7 classes).

    python benchmarks/train_step.py [--size 1024] [--batch 2] [--grids 2 4] [--steps 5]
    python benchmarks/train_step.py --sides geoddu@bf16 geoddu reference
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

SEED = 0


def build(args: argparse.Namespace, side: str, grid: int):
    """(step function, its description) for one side; every side builds the same weights and
    batch from the same seed."""
    import torch
    import torch.nn.functional as F

    from geoddu.models import create_model
    from geoddu.partition import Partition
    from geoddu.train.dropout import dropout_masks
    from geoddu.train.execution import SubimageTraining

    side, _, precision = side.partition("@")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.manual_seed(SEED)
    model = create_model(
        f"DDU-Net({args.depth},{args.features},Y)", in_channels=3, num_classes=args.classes,
        base_channels=args.base).train()
    gen = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = torch.randint(0, args.classes, (args.batch, args.size, args.size), generator=gen)
    if side.startswith("geoddu"):
        _, _, execution = side.partition(":")
        training = SubimageTraining(model, execution=execution or None)
        part = Partition.uniform(args.size, args.size, grid, grid, multiple=model.stride)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        targets = [t for row in part.split(y) for t in row]
        count = y.numel()

        def step(k: int) -> None:
            with autocast, dropout_masks(training, (SEED, 0, k)):
                logits = [lg for row in training.forward_subimages(part.split(x)) for lg in row]
            loss = sum(F.cross_entropy(lg, t, reduction="sum")
                       for lg, t in zip(logits, targets, strict=True)) / count
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return step

    from geoddu.reference.model import copy_geoddu_weights, reference_for

    ref = copy_geoddu_weights(model, reference_for(model, (grid, grid))).train()
    params = list(ref.encoders[0].parameters()) + list(ref.decoders[0].parameters())
    params += list(ref.communication_network.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    images = ref.split_image(x)

    def step(k: int) -> None:
        optimizer.zero_grad()
        with autocast:
            logits = ref(images)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()
        with torch.no_grad():
            for clones in (ref.encoders, ref.decoders):
                for clone in clones[1:]:
                    for p0, p in zip(clones[0].parameters(), clone.parameters(), strict=True):
                        if p0.grad is not None:
                            p0.grad += p.grad
                            p.grad = None
        optimizer.step()
        for clones in (ref.encoders, ref.decoders):
            for clone in clones[1:]:
                clone.load_state_dict(clones[0].state_dict())

    return step


def worker(args: argparse.Namespace) -> None:
    """Build one side, then run a step per line read; answer each with its seconds."""
    import torch

    from geoddu.resources import peak_rss_mb

    if args.threads:
        torch.set_num_threads(args.threads)
    step = build(args, args.worker, args.grid)
    for k, line in enumerate(sys.stdin):
        if line.strip() != "step":
            break
        t = time.perf_counter()
        step(k)
        print(json.dumps({"seconds": time.perf_counter() - t}), flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), "threads": torch.get_num_threads()}),
          flush=True)


def compare(args: argparse.Namespace, grid: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "", "--grid", str(grid)]
    for name in ("size", "batch", "depth", "features", "base", "classes", "threads"):
        cmd += [f"--{name}", str(getattr(args, name))]
    procs = {}
    for side in args.sides:
        cmd[3] = side
        procs[side] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    times: dict[str, list[float]] = {side: [] for side in args.sides}
    for k in range(args.warmup + args.steps):
        order = args.sides if k % 2 == 0 else args.sides[::-1]  # alternate who goes first
        for side in order:
            p = procs[side]
            p.stdin.write("step\n")
            p.stdin.flush()
            seconds = json.loads(p.stdout.readline())["seconds"]
            if k >= args.warmup:
                times[side].append(seconds)
    result = {}
    for side, p in procs.items():
        p.stdin.write("quit\n")
        p.stdin.close()
        info = json.loads(p.stdout.readline())
        p.wait()
        result[side] = {"median": statistics.median(times[side]), "min": min(times[side]),
                        "steps": times[side], **info}
    return result


def bf16_pairs(sides: list[str]) -> list[tuple[str, str]]:
    """(bf16 side, side it is compared with): its own float32 side and the reference, those of
    them that run."""
    pairs = []
    for side in sides:
        name, _, precision = side.partition("@")
        if precision == "bf16":
            pairs += [(side, base) for base in (name, "reference")
                      if base in sides and base != side]
    return list(dict.fromkeys(pairs))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="global patch size (px)")
    ap.add_argument("--batch", type=int, default=2, help="global patches per batch")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--features", type=int, default=64, help="communicated maps F")
    ap.add_argument("--base", type=int, default=16, help="base channels")
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--grids", type=int, nargs="+", default=[2, 4], help="P for P x P subimages")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per side")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps per side")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per side [torch's]")
    ap.add_argument("--sides", nargs="+", default=["geoddu", "reference"],
                    help="geoddu[:sequential|:stacked][@bf16] and/or reference[@bf16]; the first "
                         "is compared with the last, a @bf16 side with its float32 side and "
                         "the reference")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--grid", type=int, default=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for side in args.sides:
        name, _, precision = side.partition("@")
        if name.partition(":")[0] not in ("geoddu", "reference") or precision not in ("", "bf16"):
            ap.error(f"--sides: {side!r} is not geoddu[:sequential|:stacked][@bf16] or "
                     f"reference[@bf16]")
    if args.worker is not None:
        worker(args)
        return
    print(f"{args.batch} x {args.size}^2 px, DDU-Net({args.depth},{args.features},Y) base "
          f"{args.base}, {args.classes} classes; cross-entropy, Adam; {args.steps} alternated "
          f"steps per side after {args.warmup} warm-up; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    out = {}
    for grid in args.grids:
        r = out[f"{grid}x{grid}"] = compare(args, grid)
        first, last = args.sides[0], args.sides[-1]
        cells = "  ".join(f"{side}: {r[side]['median']:.2f} s/step (min {r[side]['min']:.2f}), "
                          f"peak RSS {r[side]['peak_rss_mb']:.0f} MB" for side in args.sides)
        ratio = r[first]["median"] / r[last]["median"]
        print(f"{grid}x{grid}: {cells}  ratio {first}/{last} {ratio:.2f} "
              f"({r[first]['threads']} threads)", flush=True)
        for side, base in bf16_pairs(args.sides):
            print(f"{grid}x{grid}: ratio {side}/{base} "
                  f"{r[side]['median'] / r[base]['median']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
