"""`geoddu evaluate`: per-class IoU and mIoU of a checkpoint on a dataset split (Eq. 2)."""

from __future__ import annotations

import json
import math

import click

from geoddu.data import DATASETS

from .options import device_option, json_option, model_option, precision_option, quiet_option


@click.command(short_help="Per-class IoU and mIoU of a checkpoint on a dataset.")
@model_option("geoddu checkpoint.", dest="model_path", required=True, exists=True)
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Kind of data [the one the checkpoint was trained on].")
@click.option("--data", type=click.Path(exists=True, file_okay=False), default=None,
              help="Dataset folder [the one the checkpoint was trained on].")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True, help="Which split to score.")
@click.option("--subimages", default=None, metavar="P|NxM",
              help="Subimage grid per patch (may differ from training, Sec. V-A4).")
@click.option("--subimage-size", type=click.IntRange(1), default=None,
              help="Fixed subimage size: the grid follows the patch size [the checkpoint's].")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True)
@device_option("cpu, cuda or cuda:N.", default="cpu")
@click.option("--workers", type=click.IntRange(0), default=0, show_default=True,
              help="Data loading processes.")
@click.option("--patch-size", type=click.IntRange(16), default=None,
              help="DeepGlobe / folder: global patch size [as in training].")
@click.option("--seed", type=int, default=None, help="Split seed [as in training].")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option("--test-fraction", type=click.FloatRange(0, 1, max_open=True), default=None)
@click.option("--classes-file", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--class-column", default=None)
@precision_option(
    "The forward's precision (autocast): fp32, bf16 (fast on CPUs with AVX-512 BF16 or AMX), "
    "fp16 (CUDA only), auto (the cached probe's choice). [fp16 on CUDA, fp32 on the CPU]",
    default=None)
@json_option
@quiet_option
def evaluate(model_path, dataset, data, split, subimages, subimage_size, batch_size, device,
             workers, patch_size, seed, val_fraction, test_fraction, classes_file, class_column,
             precision, as_json, quiet) -> None:
    """Score the checkpoint MODEL on a dataset split: IoU per class with true/false positives
    and false negatives summed over the whole split (Eq. 2), and their mean, mIoU (Eq. 3).
    Classes the dataset ignores (DeepGlobe's 'unknown' by default) are left out.

    By default the data, the split settings and the subimage size are the checkpoint's own, so
    `--split test` scores exactly the images training held out. A different subimage grid or
    size tests generalisation to more subimages than in training, as in Sec. V-A4.

    \b
    Examples:
      geoddu evaluate -m runs/k2/best.pt
      geoddu evaluate -m runs/k2/best.pt --dataset synthetic --data data/k6 --json
      geoddu evaluate -m runs/dg/best.pt --subimages 16 --device cuda
    """
    import torch

    from geoddu.checkpoint import load_checkpoint, model_from_checkpoint
    from geoddu.data import open_dataset
    from geoddu.errors import GeodduError
    from geoddu.parallel.devices import resolve_device
    from geoddu.train import evaluate as run_evaluate
    from geoddu.train import parse_grid
    from geoddu.train.evaluation import check_model_fits

    ckpt = load_checkpoint(model_path)
    record = ckpt.get("training") or {}
    trained = dict(record.get("dataset") or {})
    trained_kind = trained.pop("kind", None)
    dataset = dataset or trained_kind
    data = data or (record.get("data") if dataset == trained_kind else None)
    if dataset is None or data is None:
        raise GeodduError("give --dataset and --data (the checkpoint does not name its data)")
    options = dict(trained) if dataset == trained_kind else {}
    given = {"patch_size": patch_size, "seed": seed, "val_fraction": val_fraction,
             "test_fraction": test_fraction, "classes_file": classes_file,
             "class_column": class_column}
    options.update({k: v for k, v in given.items() if v is not None})
    ds = open_dataset(dataset, data, split, **options)
    model = model_from_checkpoint(ckpt)
    check_model_fits(model, ds, f"{model_path}:")
    grid = parse_grid(subimages)
    if grid is None and subimage_size is None:
        h, w = ds.patch_shape
        size = int(ckpt["subimage_size"])
        if h % size == 0 and w % size == 0:
            subimage_size = size
        else:
            grid = tuple(record.get("grid") or ds.grid or (1, 1))
    dev = resolve_device(device, "evaluation runs on one device")
    if precision is not None:
        from geoddu.precision_probe import resolve_precision

        precision = resolve_precision(precision, dev)
    loss = (record.get("config") or {}).get("loss", "class-dice")

    def run(progress=None):
        return run_evaluate(
            model.to(dev), ds, normalization=ckpt["normalization"], grid=grid,
            subimage_size=subimage_size, batch_size=batch_size, device=dev,
            amp=dev.type == "cuda", precision=precision, workers=workers, loss=loss,
            progress=progress,
        )

    with torch.inference_mode():
        if quiet or as_json:
            result = run()
        else:
            from rich.progress import Progress

            with Progress(transient=True) as bar:
                task = bar.add_task("evaluate", total=None)
                result = run(lambda done, total: bar.update(task, completed=done, total=total))
    from geoddu.train.evaluation import make_partition

    h, w = ds.patch_shape
    part = make_partition(h, w, model.stride, grid, subimage_size)
    out = {
        "model": str(model_path),
        "dataset": dataset,
        "data": str(data),
        "split": split,
        "precision": precision or ("fp16" if dev.type == "cuda" else "fp32"),
        "images": result["images"],
        "patch_size": [h, w],
        "grid": list(part.grid),
        "subimage_size": [part.row_sizes[0], part.col_sizes[0]],
        "iou": dict(zip(result["classes"], result["iou"], strict=True)),
        "miou": result["miou"],
        "loss": result["loss"],
    }
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    if quiet:
        click.echo(f"mIoU {out['miou']:.4f}")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{model_path} on the {dataset} {split} split: {out['images']} patches of "
                  f"{w} x {h} px, {part.grid[0]} x {part.grid[1]} subimages each")
    table = Table("class", "IoU")
    for name, value in out["iou"].items():
        table.add_row(name, "ignored / absent" if value is None else f"{value:.4f}")
    miou = out["miou"]
    table.add_row("[bold]mIoU[/bold]", "-" if math.isnan(miou) else f"[bold]{miou:.4f}[/bold]")
    console.print(table)
