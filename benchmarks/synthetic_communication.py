"""Reproduce the paper's synthetic finding (Figs. 8 and 9) on a CPU.

Trains DDU-Net(3,32,Y), DDU-Net(3,32,N) and U-Net(3) (the Table VIII networks: one grey band,
base 4 channels, 3 classes) on the synthetic set for k = 2 and k = 6 subimages and reports the
IoU of the line class on the test split. The DDU-Nets see k subimages of 32 x 32 px; the U-Net
sees the whole (k*32) x 32 px image. Hyperparameters are Table X's (lr 0.008, batch 16, at most
40 epochs, early stopping patience 8 after epoch 20, LR halved after 3 epochs without
improvement) except that, to fit a CPU budget of about 25 minutes on 2 cores, there is less data
and training stops after 30 epochs: 1200 training and 200 validation images at k=2, and for
larger k proportionally fewer (k=6: 400 and 67) so that every k trains on the same number of
pixels; 500 test images per k. The paper used 4000 / 1000 / 1000 images per k and 40 epochs;
`--train 4000 --val 1000 --test 1000 --same-count --epochs 40` sets that back.

    python benchmarks/synthetic_communication.py --out bench-synthetic
    python benchmarks/synthetic_communication.py --k 2 --models "DDU-Net(3,32,Y)" \
        "DDU-Net(3,32,N)" --precision bf16

`--precision bf16` trains (and evaluates) as `geoddu train --precision bf16` does; its runs live
beside the float32 ones (OUT/k{K}/{name}-bf16). Prints a Markdown table and writes
OUT/results.json (OUT/results-bf16.json). Runs are cached: a model whose best.pt exists is
evaluated, not retrained (pass --fresh to retrain).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from geoddu.checkpoint import load_checkpoint, model_from_checkpoint
from geoddu.data import open_dataset
from geoddu.data.synthetic import write
from geoddu.train import evaluate, preset, start_training

MODELS = {
    "DDU-Net(3,32,Y)": {"arch": "DDU-Net(3,32,Y)", "grid": None},
    "DDU-Net(3,32,N)": {"arch": "DDU-Net(3,32,N)", "grid": None},
    "U-Net(3)": {"arch": "U-Net(3)", "grid": (1, 1)},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench-synthetic", help="working folder")
    p.add_argument("--k", type=int, nargs="+", default=[2, 6], help="subimages per image")
    p.add_argument("--train", type=int, default=1200, help="training images at k=2")
    p.add_argument("--val", type=int, default=200, help="validation images at k=2")
    p.add_argument("--test", type=int, default=500, help="test images per k")
    p.add_argument("--same-count", action="store_true",
                   help="as many training/validation images for every k (default: 2/k as many)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs (Table X: 40)")
    p.add_argument("--min-epochs", type=int, default=20, help="Table X: 20")
    p.add_argument("--patience", type=int, default=8, help="Table X: 8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (1 avoids oversubscription on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="training and evaluation precision")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS),
                   help="which of the models to train")
    p.add_argument("--fresh", action="store_true", help="retrain even if a run exists")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models = {name: MODELS[name] for name in args.models}
    suffix = "" if args.precision == "fp32" else f"-{args.precision}"
    results: dict[str, dict[str, dict]] = {name: {} for name in models}
    t_all = time.perf_counter()
    for k in args.k:
        data = out / f"k{k}"
        scale = 1.0 if args.same_count else 2 / k
        n_train, n_val = round(args.train * scale), round(args.val * scale)
        if not (data / "synthetic.json").is_file():
            write(data, k, train=n_train, val=n_val, test=args.test, seed=args.seed)
        test = open_dataset("synthetic", data, "test")
        for name, spec in models.items():
            run = data / (spec["arch"].replace("(", "-").replace(")", "").replace(",", "-")
                          + suffix)
            t0 = time.perf_counter()
            if args.fresh or not (run / "best.pt").is_file():
                if run.exists():
                    shutil.rmtree(run)
                cfg = preset("synthetic", epochs=args.epochs, min_epochs=args.min_epochs,
                             patience=args.patience, seed=args.seed, device=args.device,
                             subimages=spec["grid"], precision=args.precision)
                trained = start_training("synthetic", data, run, cfg, arch=spec["arch"],
                                         model_options={"base_channels": 4})
                epochs, best_epoch = trained.epochs_run, trained.best_epoch
            else:
                record = load_checkpoint(run / "last.pt")["training"]
                epochs, best_epoch = record["epochs_run"], record["best_epoch"]
            train_s = time.perf_counter() - t0
            ckpt = load_checkpoint(run / "best.pt")
            model = model_from_checkpoint(ckpt)
            score = evaluate(model, test, normalization=ckpt["normalization"],
                             grid=tuple(ckpt["training"]["grid"]), batch_size=64,
                             device=args.device, precision=args.precision)
            line = score["iou"][score["classes"].index("line")]
            results[name][f"k={k}"] = {"line_iou": line, "miou": score["miou"],
                                       "epochs": epochs, "best_epoch": best_epoch,
                                       "seconds": round(train_s, 1)}
            print(f"k={k} {name}: line IoU {line:.3f}, mIoU {score['miou']:.3f}, "
                  f"{epochs} epochs (best {best_epoch}), {train_s:.0f} s", flush=True)
    minutes = (time.perf_counter() - t_all) / 60
    (out / f"results{suffix}.json").write_text(json.dumps({"args": vars(args), "results": results},
                                                 indent=2) + "\n")
    cols = [f"k={k}" for k in args.k]
    print()
    counts = "same" if args.same_count else "2/k as many for larger k"
    print(f"Line-class IoU on the test split ({args.train}/{args.val} train/val images at k=2, "
          f"{counts}; {args.test} test images per k; at most {args.epochs} epochs; "
          f"{args.precision}; {minutes:.1f} min in all)")
    print()
    print("| model | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, by_k in results.items():
        print(f"| {name} | " + " | ".join(f"{by_k[c]['line_iou']:.3f}" for c in cols) + " |")


if __name__ == "__main__":
    main()
