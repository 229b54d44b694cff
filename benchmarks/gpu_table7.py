"""The paper's Table VII setting through the segment engine, on 1, 2 and 4 devices.

DDU-Net with the ResNet-18 encoder (D=4, F=256 communicated maps, 7 classes: 9.7M parameters,
as in the table), randomly initialised, batch 1:

1. a 2048^2 image cut into 2 x 2 subimages of 1024^2, fp32, segmented by `geoddu.segment` with
   its subimages spread over N devices (`--gpus N`, or a device list); seconds per image after
   a warm-up run, peak device memory per GPU (`torch.cuda.max_memory_allocated`), Mpx/s;
2. the streaming engine on a 16384^2 scene (same model and subimage size) with `--gpus N
   --precision bf16`.

The paper's figures (one V100: 0.0857 s, 2742 MB, on a 1 x 1 subdomain; four V100s, 2 x 2
subdomains: 0.0463 s, 739 MB per GPU) are a forward pass on a tensor in GPU memory. The engine's
figures also hold reading the GeoTIFF, writing the class map, and a second encoder pass per
subimage (the decode pass re-encodes for the skips instead of keeping them), so they are upper
bounds on the forward alone.

    python benchmarks/gpu_table7.py                      # GPUs: 1, 2, 4 (counts above this
                                                         # host's GPUs are reported as skipped)
    python benchmarks/gpu_table7.py --device cpu,cpu --size 128 --scene-size 256 --repeats 1

With `--device LIST` the N-device configuration runs on the first N entries of LIST, repeated
as needed ("cpu,cpu" -> cpu / cpu,cpu / cpu,cpu,cpu,cpu): the multi-device path on the CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

# Table VII, DDU-Net ResNet18: (seconds per 2048^2 image, peak MB per GPU) by GPU count.
PAPER = {1: "0.0857 s / 2742 MB (1 V100, 1x1)", 4: "0.0463 s / 739 MB (4 V100, 2x2)"}


def make_checkpoint(path: Path, subimage_size: int, classes: int = 7, seed: int = 0) -> Path:
    from geoddu.checkpoint import save_checkpoint
    from geoddu.checkpoint_metadata import build_metadata
    from geoddu.models import create_model

    torch.manual_seed(seed)
    model = create_model("resnet18", in_channels=3, num_classes=classes, depth=4,
                         comm_features=256)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(4.0)  # keep random activations in a sane range
    save_checkpoint(path, model, build_metadata(model.config, subimage_size=subimage_size))
    return path


def device_sets(counts: list[int], device: str | None) -> list[tuple[int, dict, str | None]]:
    """(N, segment options, reason skipped or None) per configuration."""
    out = []
    if device is None:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        for n in counts:
            skip = None if n <= have else f"this host has {have} CUDA device(s)"
            out.append((n, {"gpus": n}, skip))
        return out
    names = [d.strip() for d in device.split(",") if d.strip()]
    for n in counts:
        out.append((n, {"device": ",".join((names * n)[:n])}, None))
    return out


def cuda_indices(options: dict) -> list[int]:
    if "gpus" in options:
        return list(range(options["gpus"]))
    devs = [torch.device(d) for d in options["device"].split(",")]
    return sorted({d.index or 0 for d in devs if d.type == "cuda"})


def sync(indices: list[int]) -> None:
    for i in indices:
        torch.cuda.synchronize(i)


def timed(scene: Path, out: Path, model, options: dict, repeats: int) -> dict:
    """Warm-up run, then `repeats` timed runs: seconds per image (mean, std), peak MB per GPU."""
    import geoddu

    cuda = cuda_indices(options)
    run = lambda: geoddu.segment(scene, out, model, overwrite=True, **options)  # noqa: E731
    result = run()  # warm-up: cuDNN algorithm choice, allocator, replicas' first copies
    sync(cuda)
    for i in cuda:
        torch.cuda.reset_peak_memory_stats(i)
    times = []
    for _ in range(repeats):
        sync(cuda)
        t = time.perf_counter()
        result = run()
        sync(cuda)
        times.append(time.perf_counter() - t)
    mean = sum(times) / len(times)
    std = (sum((x - mean) ** 2 for x in times) / len(times)) ** 0.5
    peak = ("/".join(f"{torch.cuda.max_memory_allocated(i) / 2**20:.0f}" for i in cuda)
            if cuda else "n/a")
    mpx = result.width * result.height / 1e6
    return {"seconds": mean, "std": std, "peak_mb": peak, "mpx_s": mpx / mean,
            "devices": ",".join(result.devices)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4],
                    help="device counts (default 1 2 4)")
    ap.add_argument("--device", default=None,
                    help="device list instead of --gpus N, e.g. cpu,cpu or cuda:0,cuda:2")
    ap.add_argument("--size", type=int, default=2048, help="Table VII image side (2 x 2 cells)")
    ap.add_argument("--scene-size", type=int, default=16384, help="streaming scene side")
    ap.add_argument("--precision", default="bf16", help="precision of the streaming runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    if args.size % 32:
        ap.error("--size must be a multiple of 32 (2 x 2 subimages, model stride 16)")
    from _common import make_scene

    from geoddu.predictor import load_model

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-table7-"))
    work.mkdir(parents=True, exist_ok=True)
    cell = args.size // 2
    ckpt = make_checkpoint(work / f"resnet18_{cell}.pt", cell)
    image = make_scene(work / f"image_{args.size}.tif", args.size)
    scene = make_scene(work / f"scene_{args.scene_size}.tif", args.scene_size, seed=1)
    configs = device_sets(args.counts, args.device)
    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"
    print(f"DDU-Net ResNet18 (D=4, F=256, 7 classes), {cell}^2 subimages, batch 1; "
          f"torch {torch.__version__}, {gpu_name}; {args.repeats} timed run(s) after a warm-up; "
          f"workdir {work}", flush=True)

    rows = []
    for what, path, precision in (
        (f"{args.size}^2, 2x2, fp32", image, "fp32"),
        (f"{args.scene_size}^2 streaming, {args.precision}", scene, args.precision),
    ):
        for n, options, skip in configs:
            label = f"{what}, {n} dev"
            paper = PAPER.get(n, "-") if path is image else "-"
            if skip:
                rows.append((label, "skipped", skip, "", "", paper))
                print(f"{label}: skipped ({skip})", flush=True)
                continue
            first = "cuda:0" if "gpus" in options else options["device"].split(",")[0]
            model = load_model(ckpt, device=first)
            res = timed(path, work / "out.tif", model, {**options, "precision": precision,
                                                       "subimage_size": cell}, args.repeats)
            del model
            rows.append((label, res["devices"], f"{res['seconds']:.4f} ± {res['std']:.4f}",
                         res["peak_mb"], f"{res['mpx_s']:.2f}", paper))
            peak = "n/a" if res["peak_mb"] == "n/a" else f"{res['peak_mb']} MB/GPU"
            print(f"{label} on {res['devices']}: {res['seconds']:.4f} s, peak {peak}, "
                  f"{res['mpx_s']:.2f} Mpx/s", flush=True)
    print()
    print("| configuration | devices | s per image | peak MB per GPU | Mpx/s | paper (Table VII) |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
