"""How close `geoddu segment` comes to this machine's convolution ceiling on the CPU.

The ceiling is what torch reaches on one large 3x3 convolution (64 -> 64 channels, 512^2,
channels-last, the layout the engine uses). The model's FLOPs per megapixel are counted from its
layers (geoddu.analysis.conv_flops). The executed FLOPs add the encoder runs beyond one per
subimage (none in one pass on a scene as wide as a strip; every subimage's in two passes) and
the communication network over its halos; both ratios are printed. Goal: model FLOPs delivered
>= 75% of the ceiling end to end, executed <= 1.05x the model's.

    python benchmarks/segment_roofline.py [--size 4096] [--model "DDU-Net(4,64,Y)"]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def conv_ceiling(repeats: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """GFLOP/s of torch on one large convolution (the best of `repeats`), in `dtype` (bf16:
    bf16 weights and input, as the engine's bf16 copy of the model runs)."""
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    conv = conv.to(dtype).to(memory_format=torch.channels_last)
    x = torch.randn(1, 64, 512, 512).to(dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 64 * 64 * 9 * 512 * 512
    best = float("inf")
    with torch.inference_mode():
        conv(x)
        for _ in range(repeats):
            t = time.perf_counter()
            conv(x)
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def main() -> None:
    from _common import add_model_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="the model's arithmetic; the ceiling is timed in the same")
    add_model_options(ap)
    args = ap.parse_args()

    from _common import make_checkpoint, make_scene

    import geoddu
    from geoddu.analysis import conv_flops

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-roofline-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "roofline.pt", args.model, args.base_channels,
                           args.subimage_size)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    model = geoddu.load_model(ckpt, precision=args.precision)
    dtype = model.dtype
    # FLOPs are counted on the plain module tree (the loaded model's encoder and decoder are
    # traced and frozen for the CPU, which hides their layers from hooks).
    plain = geoddu.load_model(ckpt, fuse=False).net
    s = args.subimage_size
    per_mpx = 1e6 / (s * s)
    model_flops = conv_flops(plain, s, s) * per_mpx
    encoder_flops = conv_flops(plain.encoder, s, s, in_channels=3) * per_mpx
    comm_flops = conv_flops(plain.comm, s // plain.stride, s // plain.stride,
                            in_channels=plain.comm_features) * per_mpx if plain.comm else 0

    # The ceiling is the best of many timings before and after the run: a single short
    # convolution timed on a shared machine reads anywhere from half to all of it.
    before = conv_ceiling(20, dtype)
    t = time.perf_counter()
    result = geoddu.segment(scene, work / "out.tif", model, overwrite=True,
                            precision=args.precision)
    seconds = time.perf_counter() - t
    after = conv_ceiling(20, dtype)
    ceiling = max(before, after)
    mpx_s = result.width * result.height / 1e6 / seconds
    extra = (result.encoder_runs - result.subimages) / result.subimages
    # Each communication tile (a row of a strip, or a square of cells) is computed over its
    # halo too: its area with the halo over its area without.
    cell, halo = s // plain.stride, plain.comm_halo
    if result.schedule == "one pass":
        wide = min(result.width // s, 8) * cell
        halo_share = (wide + 2 * halo) * (cell + 2 * halo) / (wide * cell) - 1
    else:
        wide = min(result.width // s * cell, 256)
        halo_share = ((wide + 2 * halo) / wide) ** 2 - 1
    executed = model_flops + extra * encoder_flops + halo_share * comm_flops
    delivered = model_flops * mpx_s / 1e9
    print(f"model {args.model} base {args.base_channels}, subimages {s}^2, scene {args.size}^2, "
          f"{torch.get_num_threads()} CPU threads, {args.precision}")
    print(f"{args.precision} conv ceiling (64->64 3x3, 512^2): {ceiling:.1f} GFLOP/s "
          f"(best of 20 before: {before:.1f}, after: {after:.1f})")
    print(f"model FLOPs per megapixel (one forward):     {model_flops / 1e9:.1f} GFLOP/Mpx")
    print(f"schedule: {result.schedule}, {result.encoder_runs} encoder runs for "
          f"{result.subimages} subimages")
    print(f"executed FLOPs per megapixel:                {executed / 1e9:.1f} GFLOP/Mpx = "
          f"{executed / model_flops:.3f}x the model's")
    print(f"end to end (read, segment, write):           {seconds:.1f} s, {mpx_s:.3f} Mpx/s")
    print(f"model FLOPs delivered:                       {delivered:.1f} GFLOP/s = "
          f"{100 * delivered / ceiling:.0f}% of ceiling")
    print(f"FLOPs executed:                              {executed * mpx_s / 1e9:.1f} GFLOP/s = "
          f"{100 * executed * mpx_s / 1e9 / ceiling:.0f}% of ceiling")


if __name__ == "__main__":
    main()
