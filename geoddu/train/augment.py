"""Label-preserving augmentation: flips and 90-degree rotations (Sec. V-B).

Drawn from the epoch's numpy generator in the main process, so the augmentation of every sample
depends only on (seed, epoch, position) and a resumed run sees exactly the same batches. The
draws are made for the whole global batch, so data-parallel ranks, which each load a share of
it, apply exactly what one process would.
"""

from __future__ import annotations

import numpy as np
import torch


def draw_augmentation(rng: np.random.Generator, n: int, square: bool) -> np.ndarray:
    """(n, 3) ints per sample: horizontal flip, vertical flip, quarter turns.

    Non-square patches are only rotated by 0 or 180 degrees: a quarter turn would change their
    shape (and their subimage grid), and a batch must keep one shape.
    """
    flips = rng.random((n, 2)) < 0.5
    turns = rng.integers(0, 4, n) if square else 2 * rng.integers(0, 2, n)
    return np.column_stack([flips.astype(np.int64), turns])


def apply_augmentation(
    images: torch.Tensor, labels: torch.Tensor, draws: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one row of `draws` to each sample."""
    out_x, out_y = [], []
    for i in range(images.shape[0]):
        x, y = images[i], labels[i]
        dims = [d for d, f in zip((-1, -2), draws[i, :2], strict=True) if f]
        if dims:
            x, y = torch.flip(x, dims), torch.flip(y, dims)
        turns = int(draws[i, 2])
        if turns:
            x, y = torch.rot90(x, turns, (-2, -1)), torch.rot90(y, turns, (-2, -1))
        out_x.append(x)
        out_y.append(y)
    if not out_x:
        return images, labels
    return torch.stack(out_x).contiguous(), torch.stack(out_y).contiguous()


def augment_batch(
    images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip, vertical flip and rotation by k * 90 degrees per sample."""
    square = images.shape[-1] == images.shape[-2]
    return apply_augmentation(images, labels, draw_augmentation(rng, images.shape[0], square))
