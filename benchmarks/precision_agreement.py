"""Do bf16 classes agree with fp32 on trained checkpoints? (issue 23, item 2)

Three trained checkpoints (benchmarks/_trained.py): (a) the demo's DDU-Net(3,32,Y) asset on the
demo scene, (b) DDU-Net(3,32,Y) trained with `geoddu train` on a small synthetic k=2 set, on a
synthetic k=2 scene, (c) DDU-Net(4,64,Y) base 16 trained with `geoddu train --dataset folder`
on GeoTIFFs cut from a real raster with GeoPackage polygon labels, on a held-out band of it.
Each scene is segmented by `geoddu segment --precision fp32` and `--precision bf16` (each its own
process); printed: the share of valid pixels whose class agrees, the count that differ, and
each precision's agreement with the truth (per-class IoU, mIoU, pixel accuracy).

    python benchmarks/precision_agreement.py --workdir /tmp/agreement-work \
        --real-raster RGB.byte.tif

The checkpoints are trained once into --workdir and reused (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))

PRECISIONS = ("fp32", "bf16")
# The rule for making `--precision auto` pick bf16.
AUTO_RULE = 0.999


def agreement(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Share of valid pixels where two class maps agree, and how many differ."""
    differ = int(((a != b) & valid).sum())
    n = int(valid.sum())
    return {"pixels": n, "differ": differ, "agree": 1.0 - differ / n}


def truth_scores(pred: np.ndarray, truth: np.ndarray, classes: int) -> dict[str, Any]:
    """Per-class IoU, mIoU and pixel accuracy over the pixels whose truth is known."""
    from geoddu.metrics import IoUAccumulator

    known = truth != 255
    acc = IoUAccumulator(classes)
    acc.update(pred[known], truth[known])
    return {"iou": [round(float(v), 4) for v in acc.iou()], "miou": round(acc.miou(), 4),
            "accuracy": round(float((pred[known] == truth[known]).mean()), 4)}


def segment(case: Any, work: Path, precision: str, threads: int) -> np.ndarray:
    from _trained import geoddu_cli

    out = work / "segment" / f"{case.checkpoint.parent.name}-{case.scene.stem}-{precision}.tif"
    out.parent.mkdir(parents=True, exist_ok=True)
    geoddu_cli("segment", case.scene, "-o", out, "-m", case.checkpoint, "--precision", precision,
               "--overwrite", "-q", threads=threads)
    with rasterio.open(out) as ds:
        return ds.read(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=None,
                    help="checkpoints, scenes and outputs; reused when present [a temp folder]")
    ap.add_argument("--real-raster", type=Path, default=None,
                    help="a real 3-band uint8 raster for case (c), e.g. rasterio's "
                         "tests/data/RGB.byte.tif [a synthetic stand-in]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    from _common import workdir
    from _trained import cases

    from geoddu.checkpoint import load_checkpoint

    work = workdir(args.workdir, "geoddu-agreement-")
    report = []
    for case in cases(work, args.real_raster):
        maps = {p: segment(case, work, p, args.threads) for p in PRECISIONS}
        classes = len(load_checkpoint(case.checkpoint)["classes"])
        row = {"case": case.name, "checkpoint": str(case.checkpoint),
               "bf16_vs_fp32": agreement(maps["fp32"], maps["bf16"], case.valid),
               **{f"truth_{p}": truth_scores(maps[p], case.truth, classes) for p in PRECISIONS}}
        report.append(row)
    print()
    for row in report:
        a = row["bf16_vs_fp32"]
        print(f"{row['case']}: bf16 vs fp32 agree on {a['agree']:.5%} of {a['pixels']} valid "
              f"pixels ({a['differ']} differ)")
        for p in PRECISIONS:
            t = row[f"truth_{p}"]
            print(f"  {p}: vs truth mIoU {t['miou']:.4f}, accuracy {t['accuracy']:.4f}, "
                  f"IoU per class {t['iou']}")
    worst = min(r["bf16_vs_fp32"]["agree"] for r in report)
    verdict = "meets" if worst >= AUTO_RULE else "misses"
    print(f"lowest agreement {worst:.5%}: {verdict} the rule for `--precision auto` "
          f"(>= {AUTO_RULE:.1%} on every checkpoint)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
