"""Dropout masks that do not depend on how a batch is spread over ranks.

The masks are laid out as one process's stacked batch of subimages, subimage-major: row
`k * B + b` is subimage k (row-major in the partition) of patch b, one channel mask per row.
The communicated mosaic is a batch of B rows, one per patch. Training may run the subimages as
separate streams (`geoddu.models.streams`, one per subimage on the CPU): a layer then runs once
per stream, draws the whole mask on its first call and gives each stream its subimages' rows
(`stream_rows`), so the masks do not depend on how the subimages are run either. A rank of a
data x spatial mesh holds only some of those rows: its block of subimages (`SpatialDDUNet`) of
its share of the patches. For its step to be the one-process step it must drop the same
channels of the same rows, whichever rank holds them.

`SharedDropout2d` does that inside `dropout_masks(model, key, rows)`: each layer draws the mask
of the whole one-process stacked batch (same shape, same order) from its own generator, seeded
from `key` (the training seed, epoch and step: the same on every rank and in one process) and
the layer's place in the model, and keeps the rows this rank holds (`BatchRows`). Drawing
whole masks costs N x C Bernoulli draws per layer, nothing next to the convolutions.

Why not torch's global generator, as plain `nn.Dropout2d` uses: its stream cannot be kept the
same on every rank. The communication network runs on one rank per patch group, a rank whose
data share of a short last batch is empty draws nothing (dropout skips empty tensors), every
CUDA device has a generator of its own, and a resumed run restores rank 0's state everywhere.
So training draws its masks from these per-step generators in one process too; one process's
masks therefore differ from what the global generator gave before this module existed (the
same distribution, another stream). A side effect: the masks do not depend on the device
(they are drawn on the CPU) and a resumed run redraws exactly the masks of an uninterrupted one.

Outside `dropout_masks` (or in eval mode) a `SharedDropout2d` is a plain `nn.Dropout2d`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class BatchRows:
    """Which rows of the one-process stacked batch a rank holds.

    `cells`: the global (row-major) indices of the rank's subimages, in the order it stacks
    them; `n_cells`: the subimages of a patch. `patches`: the global indices of the rank's
    patches (its data share); `n_patches`: the global batch size.
    """

    cells: tuple[int, ...]
    n_cells: int
    patches: range
    n_patches: int

    def rows(self, mosaic: bool) -> tuple[list[int], int]:
        """(this rank's rows, rows of the whole batch) of a subimage batch, or of the
        communicated mosaic (one row per patch)."""
        if mosaic:
            return list(self.patches), self.n_patches
        n = self.n_patches
        return [k * n + b for k in self.cells for b in self.patches], self.n_cells * n


class SharedDropout2d(nn.Dropout2d):
    """`nn.Dropout2d` whose masks, inside `dropout_masks`, are those one process draws.

    `index` is the layer's place among the model's dropout layers (its generator's seed);
    `mosaic` says that it runs on the communicated mosaic (a batch of patches) rather than on
    stacked subimages.
    """

    def __init__(
        self, p: float = 0.5, inplace: bool = False, *, index: int = 0, mosaic: bool = False
    ) -> None:
        super().__init__(p, inplace)
        self.index = index
        self.mosaic = mosaic
        self._step: _Step | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.shared_mask(x)
        return super().forward(x) if mask is None else x * mask

    def shared_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The scaled mask this layer multiplies `x` by inside `dropout_masks`, else None."""
        step = self._step
        if step is None or not self.training or self.p == 0 or x.dim() != 4:
            return None
        return step.mask(self, x)


class _Step:
    """The masks of one training step: one generator per layer, created on first use, and
    each layer's mask for the whole batch, drawn on its first call and kept for the others
    (a layer runs once per stream when subimages run as separate streams)."""

    def __init__(self, key: tuple[int, ...], rows: BatchRows | None) -> None:
        self.key, self.rows = key, rows
        self.masks: dict[int, torch.Tensor] = {}

    def mask(self, layer: SharedDropout2d, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        stream = _STREAM.get()
        pick: list[int] | None = None
        if self.rows is not None:
            pick, total = self.rows.rows(layer.mosaic)
        elif stream is not None:  # one process: all its subimages, all their rows
            total = stream.total * stream.per
        else:
            total = n
        noise = self.masks.get(layer.index)
        if noise is None:
            seed = np.random.SeedSequence([*self.key, layer.index]).generate_state(1, np.uint64)
            gen = torch.Generator().manual_seed(int(seed[0]))
            # What torch's feature dropout does (Bernoulli(1 - p) per (row, channel), scaled
            # by 1 / (1 - p)), drawn for the whole one-process batch.
            noise = torch.empty(total, c, 1, 1).bernoulli_(1 - layer.p, generator=gen)
            self.masks[layer.index] = noise
        if stream is not None:
            held = pick if pick is not None else range(total)
            pick = [held[k * stream.per + b] for k in stream.cells for b in stream.rows]
        if pick is not None:
            if len(pick) != n:
                raise ValueError(f"dropout layer {layer.index} got {n} rows, the batch layout "
                                 f"says {len(pick)}")
            noise = noise[pick]
        # Not in place: without a pick, `noise` may be the kept mask itself.
        return noise.to(device=x.device, dtype=x.dtype) / (1 - layer.p)


@dataclass(frozen=True)
class StreamRows:
    """The rows of one stream (`geoddu.models.streams`) in this process's stacked batch of
    `total` subimages of `per` rows each: the rows `rows` of each subimage in `cells`."""

    cells: tuple[int, ...]
    rows: range
    total: int
    per: int


_STREAM: contextvars.ContextVar[StreamRows | None] = contextvars.ContextVar(
    "geoddu_dropout_stream", default=None)


@contextlib.contextmanager
def stream_rows(rows: StreamRows) -> Iterator[None]:
    """Within the block, dropout layers hold only the rows `rows` (of the subimages, or of the
    mosaic for the layers that run on it)."""
    token = _STREAM.set(rows)
    try:
        yield
    finally:
        _STREAM.reset(token)


def share_dropout(net: nn.Module) -> nn.Module:
    """Replace every `nn.Dropout2d` of a DDU-Net by a `SharedDropout2d` (same rate), numbered
    in module order; those of a communicating network are marked as running on the mosaic.
    Calling it again changes nothing."""
    comm = getattr(net, "comm", None)
    on_mosaic = (
        {id(m) for m in comm.modules()}
        if comm is not None and getattr(net, "communicates", False)
        else set()
    )
    found = [
        (parent, name, child)
        for parent in net.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Dropout2d)
    ]
    for index, (parent, name, child) in enumerate(found):
        if not isinstance(child, SharedDropout2d):
            new = SharedDropout2d(child.p, child.inplace, index=index,
                                  mosaic=id(child) in on_mosaic)
            new.train(child.training)
            setattr(parent, name, new)
    return net


@contextlib.contextmanager
def dropout_masks(
    model: nn.Module, key: Sequence[int], rows: BatchRows | None = None
) -> Iterator[None]:
    """Within the block, the model's `SharedDropout2d` layers draw one training step's masks
    from generators seeded by `key` (non-negative ints, e.g. (seed, epoch, step)); `rows`
    says which rows of the one-process batch this rank holds (None: all of them)."""
    step = _Step(tuple(int(k) for k in key), rows)
    layers = [m for m in model.modules() if isinstance(m, SharedDropout2d)]
    for m in layers:
        m._step = step
    try:
        yield
    finally:
        for m in layers:
            m._step = None
