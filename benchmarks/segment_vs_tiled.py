"""geoddu's exact streaming engine against the way scenes are segmented today.

"Today": overlapping sliding windows, each run through the model on its own, centre-cropped
and pasted into one output array held in RAM. The same checkpoint runs both ways on the same
scene; we report time, peak RSS (each in its own process) and how many pixels get a different
class from the exact whole-scene result, overall and within 8 px of the sliding-window seams.

    python benchmarks/segment_vs_tiled.py [--size 4096] [--window 1024] [--overlap 128]
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


def run_exact(scene: str, ckpt: str, out: str) -> dict:
    import geoddu

    t = time.perf_counter()
    geoddu.segment(scene, out, ckpt, overwrite=True)
    return {"seconds": time.perf_counter() - t}


def run_tiled(scene: str, ckpt: str, out: str, window: int, overlap: int) -> dict:
    """Sliding windows with centre-crop stitching, the whole class map in RAM."""
    import rasterio
    import torch

    import geoddu

    t = time.perf_counter()
    model = geoddu.load_model(ckpt)
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


def child(kind: str, scene: str, ckpt: str, out: str, window: int, overlap: int) -> None:
    from _common import peak_rss_mb

    res = run_exact(scene, ckpt, out) if kind == "exact" else run_tiled(
        scene, ckpt, out, window, overlap)
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--overlap", type=int, default=128)
    ap.add_argument("--model", default="DDU-Net(3,16,Y)")
    ap.add_argument("--base-channels", type=int, default=8)
    ap.add_argument("--subimage-size", type=int, default=256)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child, args.window, args.overlap)
        return
    import rasterio
    from _common import make_checkpoint, make_scene

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoddu-vs-tiled-"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(work / "vs.pt", args.model, args.base_channels, args.subimage_size)
    scene = make_scene(work / f"scene_{args.size}.tif", args.size)
    results = {}
    for kind in ("exact", "tiled"):
        out = work / f"{kind}.tif"
        proc = subprocess.run(
            [sys.executable, __file__, "--window", str(args.window), "--overlap",
             str(args.overlap), "--child", kind, str(scene), str(ckpt), str(out)],
            capture_output=True, text=True, check=True,
        )
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
    with rasterio.open(work / "exact.tif") as a, rasterio.open(work / "tiled.tif") as b:
        exact, tiled = a.read(1), b.read(1)
    differ = exact != tiled
    step = args.window - args.overlap
    seam = np.zeros_like(differ)
    for k in range(step + args.overlap // 2, args.size, step):
        seam[:, max(0, k - 8) : k + 8] = True
        seam[max(0, k - 8) : k + 8, :] = True
    print(f"model {args.model} base {args.base_channels}, subimages {args.subimage_size}^2, "
          f"scene {args.size}^2, windows {args.window}^2 overlapping {args.overlap} px")
    print()
    print("| method | wall time (s) | peak RSS (MB) | pixels differing from exact |")
    print("|---|---|---|---|")
    print(f"| geoddu segment (exact, streaming) | {results['exact']['seconds']:.1f} | "
          f"{results['exact']['peak_rss_mb']:.0f} | 0 |")
    print(f"| sliding windows + centre crop | {results['tiled']['seconds']:.1f} | "
          f"{results['tiled']['peak_rss_mb']:.0f} | {int(differ.sum()):,} "
          f"({100 * differ.mean():.2f}%; {int((differ & seam).sum()):,} within 8 px of seams) |")


if __name__ == "__main__":
    main()
