"""Dataset-wide IoU / mIoU (Eqs. 2 and 3) and loss of a model on a dataset split."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..errors import GeodduError
from ..metrics import IoUAccumulator
from ..models.ddunet import DDUNet
from ..parallel.devices import autocast
from ..partition import Partition


def make_partition(
    height: int,
    width: int,
    stride: int,
    grid: tuple[int, int] | None = None,
    subimage_size: int | None = None,
) -> Partition:
    """The subimage grid of a patch: `grid` (rows, cols) or square subimages of `subimage_size`.

    Evaluating with a fixed subimage size and more subimages than in training is how the paper
    tests generalisation (Sec. V-A4).
    """
    if grid is not None and subimage_size is not None:
        raise GeodduError("give either a subimage grid or a subimage size, not both")
    if subimage_size is not None:
        if height % subimage_size or width % subimage_size:
            raise GeodduError(
                f"patches of {height} x {width} px do not cut into {subimage_size} px subimages"
            )
        grid = (height // subimage_size, width // subimage_size)
    grid = grid or (1, 1)
    return Partition.uniform(height, width, grid[0], grid[1], multiple=stride)


def check_model_fits(model: DDUNet, dataset: Any, source: str) -> None:
    """Refuse data whose bands or classes differ from the model's (`source` names the model in
    the message: "the model", or a checkpoint's path)."""
    bands, classes = model.config["in_channels"], model.config["num_classes"]
    if dataset.in_channels != bands:
        raise GeodduError(f"{source} expects {bands} band(s), the data has {dataset.in_channels}")
    if dataset.num_classes != classes:
        raise GeodduError(f"{source} has {classes} classes, the data has {dataset.num_classes}")


def check_bottleneck_trains(part: Partition, stride: int) -> None:
    """Refuse subimages that reach the bottleneck as a single pixel: BatchNorm in training needs
    more than one value per channel, and a batch of one such subimage ended in torch's
    ValueError traceback (found by fuzzing the train request: depth 4 on 16 px patches)."""
    h, w = min(part.row_sizes) // stride, min(part.col_sizes) // stride
    if h * w < 2:
        raise GeodduError(
            f"subimages of {min(part.row_sizes)}x{min(part.col_sizes)} px reach the bottleneck "
            f"(1/{stride}) as {h}x{w}: BatchNorm cannot train on a single value; use a larger "
            "--patch-size, fewer --subimages or a smaller --depth"
        )


def cell_size(part: Partition) -> int:
    """The checkpoint's `subimage_size` for a training grid (the larger side of a subimage)."""
    return max(max(part.row_sizes), max(part.col_sizes))


class Normalizer:
    """Raw values -> (x - mean) / std on the model's device."""

    def __init__(self, normalization: dict[str, list[float]], device: torch.device) -> None:
        self.mean = torch.tensor(normalization["mean"], dtype=torch.float32,
                                 device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(normalization["std"], dtype=torch.float32,
                                device=device).view(1, -1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.device, torch.float32) - self.mean) / self.std


@torch.no_grad()
def evaluate(
    model: DDUNet,
    dataset: Any,
    *,
    normalization: dict[str, list[float]],
    grid: tuple[int, int] | None = None,
    subimage_size: int | None = None,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = False,
    precision: str | None = None,
    workers: int = 0,
    loss: str = "class-dice",
    progress: Callable[[int, int], None] | None = None,
    shard: tuple[int, int] = (0, 1),
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Mean loss per batch, per-class IoU and mIoU, counts summed over the whole split.

    The model runs in eval mode (BatchNorm running statistics, no dropout) on each patch cut
    into the given subimage grid, communication over the patch's mosaic as in training.

    `precision`: "fp32", "bf16" or "fp16" (autocast; the training step's); None: fp16 with
    `amp`, else fp32.

    Under torchrun every rank evaluates batches `shard[0]`, `shard[0] + shard[1]`, ... of the
    single-process batching and `reduce` adds the ranks' loss sums and confusion matrices, so
    every rank gets the single-process figures.
    """
    from .losses import get_loss

    loss_fn = get_loss(loss)
    device = torch.device(device)
    precision = precision or ("fp16" if amp else "fp32")
    was_training = model.training
    model.eval()
    norm = Normalizer(normalization, device)
    acc = IoUAccumulator(len(dataset.classes), dataset.ignore_index)
    n = len(dataset)
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    mine = batches[shard[0] :: shard[1]]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=mine, num_workers=workers)
    losses, weights = [], []
    try:
        for b, (x, y) in enumerate(loader):
            part = make_partition(x.shape[-2], x.shape[-1], model.stride, grid, subimage_size)
            x, y = norm(x), y.to(device)
            with autocast(device, precision):
                logits = model(x, part)
            losses.append(float(loss_fn(logits, y, ignore_index=dataset.ignore_index)))
            weights.append(x.shape[0])
            acc.update(logits.argmax(1), y)
            if progress is not None:
                progress(b + 1, len(loader))
    finally:
        model.train(was_training)
    loss_sum, count = float(np.dot(losses, weights)), float(sum(weights))
    if reduce is not None:
        packed = torch.cat([torch.tensor([loss_sum, count], dtype=torch.float64),
                            torch.from_numpy(acc.confusion).reshape(-1).to(torch.float64)])
        packed = reduce(packed.to(device)).cpu()
        loss_sum, count = float(packed[0]), float(packed[1])
        acc.confusion = packed[2:].round().to(torch.int64).numpy().reshape(acc.confusion.shape)
    iou = acc.iou()
    # Labelled pixels (ignored ones left out) and the share of them predicted right.
    pixels = int(acc.confusion.sum())
    return {
        "loss": loss_sum / count if count else float("nan"),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
        "miou": acc.miou(),
        "classes": [c["name"] for c in dataset.classes],
        "images": int(count),
        "pixels": pixels,
        "overall_accuracy": float(np.trace(acc.confusion) / pixels) if pixels else float("nan"),
    }
