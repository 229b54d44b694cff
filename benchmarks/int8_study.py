"""int8 by post-training static quantization (issue 23, item 3): speed and class agreement.

geoddu's exported ONNX graph (geoddu.export_onnx) is quantized with ONNX Runtime's
`quantize_static`: QDQ, int8 weights per channel, uint8 activations (the u8 x s8 products x86's
VNNI instructions take; int8 activations ran slower here), MinMax calibration on a few
training-like inputs. The softmax and the last 1x1 convolution (the head, whose output is the
logits the classes are taken from) stay float, as is usual for a quantized model's last layer.

Agreement (`--agreement`): on the three trained checkpoints of benchmarks/_trained.py, the
classes of ORT int8 against ORT fp32 on the same inputs, calibrated on training data. Speed
(`--speed`): DDU-Net(4,64,Y) base 16 (random weights) on one 1024 x 1024 image of 2 x 2
subimages, ORT fp32, ORT int8, torch fp32 (`load_model`) and torch bf16 (`load_model(...,
precision="bf16")`), each in its own process, the processes alternated; calibrated on three
other 1024 x 1024 windows of the same synthetic scene (benchmarks/_common.make_scene).

    python benchmarks/int8_study.py --workdir /tmp/agreement-work --real-raster RGB.byte.tif
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

sys.path.insert(0, str(Path(__file__).parent))

SIDES = ("ort-fp32", "ort-int8", "torch-fp32", "torch-bf16")
# The rule for shipping --precision int8.
SHIP_SPEEDUP, SHIP_AGREE = 1.5, 0.995


def export(ckpt: Path, path: Path, size: tuple[int, int], grid: tuple[int, int]) -> Path:
    import warnings

    from geoddu.export_onnx import export_onnx

    if not path.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # non-square graphs are not for Deepness; fine here
            export_onnx(ckpt, path, size, grid)
    return path


def quantize(fp32: Path, int8: Path, calibration: np.ndarray) -> Path:
    """QDQ int8 (per-channel weights) of `fp32`, calibrated on the raw inputs `calibration`."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if int8.is_file():
        return int8

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": x[None]} for x in calibration])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    pre = int8.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32), str(pre))
    nodes = onnx.load(str(pre)).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    keep = [convs[-1]] + [n.name for n in nodes if n.op_type == "Softmax"]
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    pre.unlink()
    return int8


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_classes(sess: Any, x: np.ndarray) -> np.ndarray:
    return sess.run(None, {"input": x})[0].argmax(1).astype(np.uint8)


# ---- agreement on trained checkpoints ----

def agreement_report(work: Path, real: Path | None, threads: int) -> list[dict[str, Any]]:
    from _trained import cases
    from precision_agreement import agreement, truth_scores

    from geoddu.checkpoint import load_checkpoint
    from geoddu.predictor import load_model

    out = []
    for i, case in enumerate(cases(work, real)):
        tag = work / "int8" / f"case{i}"
        tag.parent.mkdir(parents=True, exist_ok=True)
        fp32 = export(case.checkpoint, tag.with_suffix(".fp32.onnx"), case.size, case.grid)
        int8 = quantize(fp32, tag.with_suffix(".int8.onnx"), case.calibration)
        with rasterio.open(case.scene) as src:
            image = src.read().astype(np.float32)
        h, w = case.size
        x = np.zeros((len(case.windows), image.shape[0], h, w), np.float32)
        for k, (r, c) in enumerate(case.windows):
            part = image[:, r : r + h, c : c + w]
            x[k, :, : part.shape[1], : part.shape[2]] = part
        maps = {name: _paste(ort_classes(session(p, threads), x), case)
                for name, p in (("fp32", fp32), ("int8", int8))}
        # The graph's fp32 against geoddu's own torch model on the same windows: the ONNX
        # path is the model, so int8's difference is quantization's alone.
        model = load_model(case.checkpoint)
        maps["torch"] = _paste(np.stack([model.predict(xi) for xi in x]), case)
        classes = len(load_checkpoint(case.checkpoint)["classes"])
        out.append({
            "case": case.name, "calibration_inputs": len(case.calibration),
            "int8_vs_fp32": agreement(maps["int8"], maps["fp32"], case.valid),
            "ort_fp32_vs_torch_fp32": agreement(maps["fp32"], maps["torch"], case.valid),
            "truth_fp32": truth_scores(maps["fp32"], case.truth, classes),
            "truth_int8": truth_scores(maps["int8"], case.truth, classes),
        })
    return out


def _paste(classes: np.ndarray, case: Any) -> np.ndarray:
    """Per-window class maps back into the scene's frame."""
    full = np.full(case.valid.shape, 255, np.uint8)
    for k, (r, c) in enumerate(case.windows):
        h, w = full[r : r + case.size[0], c : c + case.size[1]].shape
        full[r : r + h, c : c + w] = classes[k, :h, :w]
    return full


# ---- speed on the large model ----

def speed_inputs(work: Path, size: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """The large checkpoint, the timed image (1, 3, size, size) and three calibration ones."""
    from _common import make_checkpoint, make_scene

    ckpt = work / "speed" / "ddunet-4-64-y-b16.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if not ckpt.is_file():
        make_checkpoint(ckpt, "DDU-Net(4,64,Y)", 16, size // 2)
    scene = make_scene(work / "speed" / f"scene_{2 * size}.tif", 2 * size)
    with rasterio.open(scene) as src:
        full = src.read().astype(np.float32)
    tiles = [full[:, r : r + size, c : c + size] for r in (0, size) for c in (0, size)]
    return ckpt, tiles[0][None], np.stack(tiles[1:])


def one(side: str, work: Path, size: int, reps: int, threads: int) -> dict[str, Any]:
    """Time `reps` runs of one side after a warm-up, in this process alone."""
    import torch

    torch.set_num_threads(threads)
    ckpt, x, calib = speed_inputs(work, size)
    if side.startswith("ort"):
        path = export(ckpt, work / "speed" / f"graph_{size}.onnx", (size, size), (2, 2))
        if side == "ort-int8":
            path = quantize(path, work / "speed" / f"graph_{size}.int8.onnx", calib)
        sess = session(path, threads)
        run = lambda: ort_classes(sess, x)  # noqa: E731
    else:
        from geoddu.predictor import load_model

        model = load_model(ckpt, precision=side.split("-")[1])
        run = lambda: model.predict(x[0])  # noqa: E731
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"side": side, "median": statistics.median(times), "min": min(times)}


def speed_report(work: Path, size: int, rounds: int, reps: int, threads: int) -> dict[str, Any]:
    from _common import run_one

    # Build the graphs once, outside the timed processes.
    ckpt, _, calib = speed_inputs(work, size)
    quantize(export(ckpt, work / "speed" / f"graph_{size}.onnx", (size, size), (2, 2)),
             work / "speed" / f"graph_{size}.int8.onnx", calib)
    got: dict[str, list[float]] = {s: [] for s in SIDES}
    for r in range(rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            res = run_one(__file__, side, "--workdir", work, "--size", size, "--reps", reps,
                          "--threads", threads)
            got[side].append(res["median"])
            print(f"  round {r + 1} {side}: median {res['median']:.3f} s, min {res['min']:.3f} s",
                  flush=True)
    med = {s: statistics.median(v) for s, v in got.items()}
    return {"seconds": med, "int8_speedup_vs_ort_fp32": med["ort-fp32"] / med["ort-int8"],
            "int8_speedup_vs_torch_fp32": med["torch-fp32"] / med["ort-int8"],
            "bf16_speedup_vs_torch_fp32": med["torch-fp32"] / med["torch-bf16"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--one", choices=SIDES, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--real-raster", type=Path, default=None,
                    help="the real raster of precision_agreement.py's case (c)")
    ap.add_argument("--agreement", action="store_true", help="only the agreement part")
    ap.add_argument("--speed", action="store_true", help="only the speed part")
    ap.add_argument("--size", type=int, default=1024, help="timed image side [1024]")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    from _common import workdir

    work = workdir(args.workdir, "geoddu-int8-")
    if args.one:
        print(json.dumps(one(args.one, work, args.size, args.reps, args.threads)))
        return
    report: dict[str, Any] = {}
    if not args.speed:
        report["agreement"] = agreement_report(work, args.real_raster, args.threads)
        for row in report["agreement"]:
            a, t = row["int8_vs_fp32"], row["ort_fp32_vs_torch_fp32"]
            print(f"{row['case']}: int8 vs fp32 agree on {a['agree']:.5%} of {a['pixels']} "
                  f"valid pixels ({a['differ']} differ); ORT fp32 vs torch fp32 {t['agree']:.5%} "
                  f"({t['differ']} differ); mIoU vs truth fp32 {row['truth_fp32']['miou']:.4f}, "
                  f"int8 {row['truth_int8']['miou']:.4f}")
    if not args.agreement:
        print(f"speed: DDU-Net(4,64,Y) base 16, {args.size}^2 as 2x2 subimages, "
              f"{args.threads} threads, {args.rounds} rounds of {args.reps} runs per side")
        report["speed"] = s = speed_report(work, args.size, args.rounds, args.reps, args.threads)
        print("  medians: " + ", ".join(f"{k} {v:.3f} s" for k, v in s["seconds"].items()))
        print(f"  int8/ORT fp32 speed-up {s['int8_speedup_vs_ort_fp32']:.2f}x, int8/torch fp32 "
              f"{s['int8_speedup_vs_torch_fp32']:.2f}x, torch bf16/torch fp32 "
              f"{s['bf16_speedup_vs_torch_fp32']:.2f}x")
    if "agreement" in report and "speed" in report:
        worst = min(r["int8_vs_fp32"]["agree"] for r in report["agreement"])
        fast = report["speed"]["int8_speedup_vs_torch_fp32"]
        ok = fast >= SHIP_SPEEDUP and worst >= SHIP_AGREE
        print(f"rule (>= {SHIP_SPEEDUP}x faster than fp32 and >= {SHIP_AGREE:.1%} agreement on "
              f"every checkpoint): speed-up {fast:.2f}x, lowest agreement {worst:.5%}: "
              f"{'ship' if ok else 'do not ship'}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
