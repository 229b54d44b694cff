"""The plan's expected peak memory against the peak RSS a run then measures.

Each case runs in a fresh process: `plan_job` first (checkpoint and header only), then the run
itself, and the process's peak RSS (VmHWM) is compared with the plan's host estimate. Peak
RSS does not depend on how busy the machine is, so this can run anywhere; the estimate's
constants were measured with torch's CPU build (geoddu/engine/memory.py).

    python benchmarks/plan_memory.py [--workdir DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# (name, model, base channels, subimage size, scene size, options)
CASES = [
    ("tiny", "DDU-Net(2,4,Y)", 4, 32, 256, {}),
    ("tiny, two passes", "DDU-Net(2,4,Y)", 4, 32, 256, {"schedule": "two-pass"}),
    ("D3 F16 base 8", "DDU-Net(3,16,Y)", 8, 256, 2048, {}),
    ("D3 F16 base 8, strips of 1", "DDU-Net(3,16,Y)", 8, 256, 2048, {"strip_cells": 1}),
    ("D3 F16 base 8, two passes", "DDU-Net(3,16,Y)", 8, 256, 2048, {"schedule": "two-pass"}),
    ("D4 F64 base 16", "DDU-Net(4,64,Y)", 16, 512, 2048, {}),
    ("D4 F64 base 16, strips of 2", "DDU-Net(4,64,Y)", 16, 512, 2048, {"strip_cells": 2}),
    ("D4 F64 base 16, two passes", "DDU-Net(4,64,Y)", 16, 512, 2048, {"schedule": "two-pass"}),
    ("resnet18", "resnet18", 16, 256, 1024, {}),
    ("resnet18, probabilities", "resnet18", 16, 256, 1024, {"probabilities": True}),
]
QUICK = {"tiny", "D3 F16 base 8", "D4 F64 base 16, two passes"}


def one(scene: str, ckpt: str, out: str, options: str) -> None:
    import geoddu
    from geoddu.engine.execute import execute  # noqa: F401 - what a run imports
    from geoddu.engine.memory import RUNTIME_BYTES
    from geoddu.engine.planner import plan_job
    from geoddu.engine.request import SegmentRequest
    from geoddu.resources import current_rss_mb, peak_rss_mb

    runtime = current_rss_mb()

    opts = json.loads(options)
    if opts.pop("probabilities", False):
        opts["probabilities"] = out.replace(".tif", "_p.tif")
    plan = plan_job(SegmentRequest(src=scene, output=out, model=ckpt, overwrite=True, **opts))
    result = geoddu.segment(scene, out, ckpt, overwrite=True, **opts)
    print(json.dumps({"estimate_mb": plan.memory.peak() / 2**20, "peak_rss_mb": peak_rss_mb(),
                      "runtime_mb": runtime, "runtime_estimate_mb": RUNTIME_BYTES / 2**20,
                      "schedule": result.schedule, "planned": plan.schedule.label}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="three cases only")
    ap.add_argument("--one", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        one(*args.one)
        return
    from _common import make_checkpoint, make_scene, run_one, workdir

    work = workdir(args.workdir)
    print("| case | schedule | estimate (MB) | peak RSS (MB) | estimate / measured | "
          "beyond the runtime: estimate / measured |")
    print("|---|---|---|---|---|---|")
    for name, model, base, sub, size, opts in CASES:
        if args.quick and name not in QUICK:
            continue
        ckpt = make_checkpoint(work / f"{model}_{base}_{sub}.pt", model, base, sub)
        scene = make_scene(work / f"scene_{size}.tif", size)
        r = run_one(__file__, scene, ckpt, work / "out.tif", json.dumps(opts))
        assert r["schedule"] == r["planned"], r
        job = (r["estimate_mb"] - r["runtime_estimate_mb"]) / (r["peak_rss_mb"] - r["runtime_mb"])
        print(f"| {name} | {r['schedule']} | {r['estimate_mb']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['estimate_mb'] / r['peak_rss_mb']:.2f} | {job:.2f} |", flush=True)


if __name__ == "__main__":
    main()
