"""Wall time, throughput and peak RSS of `geoddu segment` on 2048^2, 8192^2 and 16384^2 scenes.

Goal: peak RSS at 16384^2 within 15% of the 2048^2 figure (memory does not grow with the scene).
Each size runs in a fresh process so that its peak RSS is its own.

    python benchmarks/segment_scaling.py [--sizes 2048 8192 16384] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def one(scene: str, ckpt: str, out: str) -> None:
    import geoddu

    t = time.perf_counter()
    r = geoddu.segment(scene, out, ckpt, overwrite=True)
    from _common import peak_rss_mb

    print(json.dumps({"seconds": time.perf_counter() - t, "mpx": r.width * r.height / 1e6,
                      "peak_rss_mb": peak_rss_mb(), "store_on_disk": r.map_store_on_disk}))


def main() -> None:
    from _common import add_model_options

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    add_model_options(ap, "DDU-Net(3,16,Y)", 8, 256)
    ap.add_argument("--one", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(*args.one)
        return
    from _common import make_checkpoint, make_scene, run_one, workdir

    work = workdir(args.workdir)
    ckpt = make_checkpoint(work / "model.pt", args.model, args.base_channels, args.subimage_size)
    print(f"model {args.model} base {args.base_channels}, subimages {args.subimage_size}^2, "
          f"CPU, workdir {work}")
    rows = []
    for size in args.sizes:
        scene = make_scene(work / f"scene_{size}.tif", size)
        res = run_one(__file__, scene, ckpt, work / f"out_{size}.tif")
        rows.append((size, res))
        print(f"{size}^2: {res['seconds']:.1f} s, {res['mpx'] / res['seconds']:.2f} Mpx/s, "
              f"peak RSS {res['peak_rss_mb']:.0f} MB, map store on disk: {res['store_on_disk']}",
              flush=True)
    base = rows[0][1]["peak_rss_mb"]
    print()
    print("| scene | wall time (s) | Mpx/s | peak RSS (MB) | RSS vs smallest |")
    print("|---|---|---|---|---|")
    for size, res in rows:
        print(f"| {size}^2 | {res['seconds']:.1f} | {res['mpx'] / res['seconds']:.2f} | "
              f"{res['peak_rss_mb']:.0f} | {100 * (res['peak_rss_mb'] / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
