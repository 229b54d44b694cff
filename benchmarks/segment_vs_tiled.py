"""geoddu's exact streaming engine against the way scenes are segmented today.

"Today": overlapping sliding windows (512 px, 25% overlap), each run through the model on its
own (`predict`), centre-cropped and pasted into one output array held in RAM. The same
checkpoint runs both ways on the same scene, each run its own process, the two alternated
`--repeats` times; we report the median time, peak RSS, the speed ratio and how many pixels get
a different class from the exact whole-scene result, overall and within 8 px of the seams.
Goal: geoddu segment >= 1.3x faster.

    python benchmarks/segment_vs_tiled.py [--size 4096] [--window 512] [--overlap 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def run_exact(scene: str, ckpt: str, out: str, precision: str) -> dict:
    import geoddu

    t = time.perf_counter()
    r = geoddu.segment(scene, out, ckpt, overwrite=True, precision=precision)
    return {"seconds": time.perf_counter() - t, "schedule": r.schedule,
            "encoder_runs": r.encoder_runs, "subimages": r.subimages}


def run_tiled(scene: str, ckpt: str, out: str, window: int, overlap: int,
              precision: str) -> dict:
    """Sliding windows with centre-crop stitching, the whole class map in RAM."""
    import rasterio
    import torch

    import geoddu

    t = time.perf_counter()
    model = geoddu.load_model(ckpt, precision=precision)
    with rasterio.open(scene) as src:
        h, w = src.height, src.width
        result = np.full((h, w), 255, np.uint8)
        step = window - overlap
        half = overlap // 2
        for r in range(0, h, step):
            for c in range(0, w, step):
                r0, c0 = min(r, max(0, h - window)), min(c, max(0, w - window))
                img = src.read(window=rasterio.windows.Window(c0, r0, window, window),
                               boundless=True, fill_value=0)
                with torch.inference_mode():
                    classes = model.predict(img)
                # keep the centre; at the scene edges keep up to the edge
                top = 0 if r0 == 0 else half
                left = 0 if c0 == 0 else half
                bottom = window if r0 + window >= h else window - half
                right = window if c0 + window >= w else window - half
                result[r0 + top : r0 + bottom, c0 + left : c0 + right] = classes[
                    top:bottom, left:right
                ]
        profile = src.profile | {"count": 1, "dtype": "uint8", "nodata": 255}
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(result, 1)
    return {"seconds": time.perf_counter() - t}


def child(kind: str, scene: str, ckpt: str, out: str, window: int, overlap: int,
          precision: str) -> None:
    from _common import peak_rss_mb

    res = run_exact(scene, ckpt, out, precision) if kind == "exact" else run_tiled(
        scene, ckpt, out, window, overlap, precision)
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


def main() -> None:
    from _common import add_model_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=128)
    add_model_options(ap)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="both sides compute in this precision")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.window, args.overlap, args.precision)
        return
    import rasterio
    from _common import make_checkpoint, make_scene

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-vs-tiled-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "vs.pt", args.model, args.base_channels, args.subimage_size)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    runs: dict[str, list[dict]] = {"exact": [], "tiled": []}
    for k in range(args.repeats):
        for kind in ("exact", "tiled") if k % 2 == 0 else ("tiled", "exact"):
            out = work / f"{kind}.tif"
            proc = subprocess.run(
                [sys.executable, __file__, "--window", str(args.window), "--overlap",
                 str(args.overlap), "--precision", args.precision, "--child", kind, str(scene),
                 str(ckpt), str(out)],
                capture_output=True, text=True, check=True,
            )
            runs[kind].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    results = {
        kind: {
            "seconds": float(np.median([r["seconds"] for r in rs])),
            "all": [round(r["seconds"], 1) for r in rs],
            "peak_rss_mb": max(r["peak_rss_mb"] for r in rs),
            **{k: v for k, v in rs[0].items() if k not in ("seconds", "peak_rss_mb")},
        }
        for kind, rs in runs.items()
    }
    with rasterio.open(work / "exact.tif") as a, rasterio.open(work / "tiled.tif") as b:
        exact, tiled = a.read(1), b.read(1)
    differ = exact != tiled
    step = args.window - args.overlap
    seam = np.zeros_like(differ)
    for k in range(step + args.overlap // 2, args.size, step):
        seam[:, max(0, k - 8) : k + 8] = True
        seam[max(0, k - 8) : k + 8, :] = True
    ex, ti = results["exact"], results["tiled"]
    print(f"model {args.model} base {args.base_channels}, subimages {args.subimage_size}^2, "
          f"scene {args.size}^2, {args.precision}, windows {args.window}^2 overlapping "
          f"{args.overlap} px, "
          f"median of {args.repeats} alternated runs per side (each its own process)")
    print(f"geoddu segment ran in {ex['schedule']}: {ex['encoder_runs']} encoder runs for "
          f"{ex['subimages']} subimages; runs (s): exact {ex['all']}, windows {ti['all']}")
    print()
    print("| method | wall time (s) | peak RSS (MB) | pixels differing from exact |")
    print("|---|---|---|---|")
    print(f"| geoddu segment (exact, streaming) | {ex['seconds']:.1f} | "
          f"{ex['peak_rss_mb']:.0f} | 0 |")
    print(f"| sliding windows + centre crop | {ti['seconds']:.1f} | "
          f"{ti['peak_rss_mb']:.0f} | {int(differ.sum()):,} "
          f"({100 * differ.mean():.2f}%; {int((differ & seam).sum()):,} within 8 px of seams) |")
    print()
    print(f"speed-up of geoddu segment over the windows: {ti['seconds'] / ex['seconds']:.2f}x "
          f"(goal >= 1.3x)")


if __name__ == "__main__":
    main()
