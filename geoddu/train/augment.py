"""Label-preserving augmentation: flips and 90-degree rotations (Sec. V-B).

Drawn from the epoch's numpy generator in the main process, so the augmentation of every sample
depends only on (seed, epoch, position) and a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import numpy as np
import torch


def augment_batch(
    images: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flip, vertical flip and rotation by k * 90 degrees per sample.

    Non-square patches are only rotated by 0 or 180 degrees: a quarter turn would change their
    shape (and their subimage grid), and a batch must keep one shape.
    """
    n = images.shape[0]
    square = images.shape[-1] == images.shape[-2]
    flips = rng.random((n, 2)) < 0.5
    turns = rng.integers(0, 4, n) if square else 2 * rng.integers(0, 2, n)
    out_x, out_y = [], []
    for i in range(n):
        x, y = images[i], labels[i]
        dims = [d for d, f in zip((-1, -2), flips[i], strict=True) if f]
        if dims:
            x, y = torch.flip(x, dims), torch.flip(y, dims)
        if turns[i]:
            x, y = torch.rot90(x, int(turns[i]), (-2, -1)), torch.rot90(y, int(turns[i]), (-2, -1))
        out_x.append(x)
        out_y.append(y)
    return torch.stack(out_x).contiguous(), torch.stack(out_y).contiguous()
