"""What the streaming engine costs over its model, per precision, for a small and a large model.

* engine: `geoddu.segment` of a synthetic 3-band uint8 GeoTIFF (read, normalise, the one-pass
  schedule, communication over halos, argmax, background writer with overviews, read-back
  check), the model already loaded;
* model only: the same model copy, in the same precision, over as many subimages of the same
  size held in memory: encode, communicate (each subimage's own maps), decode, argmax. No
  reading, no writing, no schedule: the least this model can spend on those pixels.

Each figure is its own process (model loading and start-up left out of both; printed apart),
the sides alternated `--repeats` times; medians. Goal (issue 23): engine <= 1.10x model only.

    python benchmarks/engine_overhead.py [--size 4096] [--precisions fp32 bf16] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# (name, base channels, subimage size): the small case and the roofline's model.
MODELS = [("small", 8, 256), ("large", 16, 512)]


def model_only(ckpt: str, precision: str, subimages: int) -> float:
    import torch

    import geoddu

    model = geoddu.load_model(ckpt, precision=precision)
    net, s = model.net, model.subimage_size
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, s, s, generator=gen).to(model.dtype)
          .contiguous(memory_format=torch.channels_last) for _ in range(4)]

    def one(x: torch.Tensor) -> None:
        with model.computing():
            skips, bottleneck = net.encode(x)
            maps = net.communicate(net.comm_input(bottleneck))
            logits = net.decode(skips, bottleneck, maps if net.communicates else None)
        logits[0].argmax(0).to(torch.uint8)

    with torch.inference_mode():
        one(xs[0])  # first-call set-up, as the engine's tracing did for its model
        t = time.perf_counter()
        for k in range(subimages):
            one(xs[k % len(xs)])
        return time.perf_counter() - t


def engine(ckpt: str, precision: str, scene: str, out: str) -> tuple[float, int]:
    import geoddu

    model = geoddu.load_model(ckpt, precision=precision)
    t = time.perf_counter()
    r = geoddu.segment(scene, out, model, precision=precision, overwrite=True)
    return time.perf_counter() - t, r.subimages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--models", nargs="+", default=[m[0] for m in MODELS],
                    choices=[m[0] for m in MODELS])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--one", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        side, ckpt, precision, scene, n = args.one
        if side == "engine":
            seconds, _ = engine(ckpt, precision, scene, str(Path(scene).with_suffix(".out.tif")))
        else:
            seconds = model_only(ckpt, precision, int(n))
        print(json.dumps({"seconds": seconds}))
        return

    from _common import make_checkpoint, make_scene, run_one

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-overhead-"))
    work.mkdir(parents=True, exist_ok=True)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    print(f"scene {args.size}^2 3-band uint8; DDU-Net(4,64,Y); median of {args.repeats} "
          "alternated runs per side, each its own process")
    print("| model | precision | engine (s) | model only (s) | engine / model |")
    print("|---|---|---|---|---|")
    for name, base, size in MODELS:
        if name not in args.models:
            continue
        ckpt = make_checkpoint(work / f"{name}.pt", "DDU-Net(4,64,Y)", base, size)
        n = (-(-args.size // size)) ** 2
        for precision in args.precisions:
            times: dict[str, list[float]] = {"engine": [], "model": []}
            for k in range(args.repeats):
                for side in ("engine", "model") if k % 2 == 0 else ("model", "engine"):
                    one = run_one(__file__, side, ckpt, precision, scene, n)
                    times[side].append(one["seconds"])
            e, m = statistics.median(times["engine"]), statistics.median(times["model"])
            print(f"| {name} (base {base}, {size}^2 x {n}) | {precision} | {e:.2f} | {m:.2f} | "
                  f"{e / m:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
