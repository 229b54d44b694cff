"""Dropout masks that do not depend on how a batch is spread over streams or ranks.

The masks are laid out as one process's stacked batch of subimages, subimage-major: row
`k * B + b` is subimage k (row-major in the partition) of patch b, one channel mask per row.
The communicated mosaic is a batch of B rows, one per patch. Training runs the subimages as
separate streams (`geoddu.train.streams`, one per subimage on the CPU): a layer then runs once
per stream, draws the whole mask on its first call and gives each stream its subimages' rows,
so the masks do not depend on how the subimages are run. A rank of a data x spatial mesh holds
only some of those rows: its block of subimages (`geoddu.train.spatial`) of its share of the
patches. For its step to be the one-process step it must drop the same channels of the same
rows, whichever rank holds them.

Inside `dropout_masks(training, key, rows)` each `nn.Dropout2d` of the model, as the streams
run it, draws the mask of the whole one-process stacked batch (same shape, same order) from a
generator of its own, seeded from `key` (the training seed, epoch and step: the same on every
rank and in one process) and the layer's place in the model, and keeps the rows this rank
holds (`BatchRows`). Drawing whole masks costs N x C Bernoulli draws per layer, nothing next to
the convolutions. The model's modules stay what they are: the streams apply the masks
(`MaskStep.mask`); a plain forward, or one outside `dropout_masks`, is torch's own dropout.

Why not torch's global generator, as plain `nn.Dropout2d` uses: its stream cannot be kept the
same on every rank. The communication network runs on one rank per patch group, a rank whose
data share of a short last batch is empty draws nothing (dropout skips empty tensors), every
CUDA device has a generator of its own, and a resumed run restores rank 0's state everywhere.
So training draws its masks from these per-step generators in one process too. A side effect:
the masks do not depend on the device (they are drawn on the CPU) and a resumed run redraws
exactly the masks of an uninterrupted one.
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


@dataclass(frozen=True)
class StreamRows:
    """The rows of one stream (`geoddu.train.streams`) in this process's stacked batch of
    `total` subimages of `per` rows each: the rows `rows` of each subimage in `cells`."""

    cells: tuple[int, ...]
    rows: range
    total: int
    per: int


@dataclass(frozen=True)
class Layer:
    """A dropout layer's place among the model's (its generator's seed), and whether it runs
    on the communicated mosaic (a batch of patches) rather than on stacked subimages."""

    index: int
    mosaic: bool


def dropout_layers(net: nn.Module) -> dict[nn.Module, Layer]:
    """Every `nn.Dropout2d` of a DDU-Net, numbered parent by parent in module order; those of a
    communicating network run on the mosaic."""
    comm = getattr(net, "comm", None)
    on_mosaic = (
        {id(m) for m in comm.modules()}
        if comm is not None and getattr(net, "communicates", False)
        else set()
    )
    found = [
        child
        for parent in net.modules()
        for child in parent.children()
        if isinstance(child, nn.Dropout2d)
    ]
    return {m: Layer(k, id(m) in on_mosaic) for k, m in enumerate(found)}


class MaskStep:
    """The masks of one training step: one generator per layer, created on first use, and
    each layer's mask for the whole batch, drawn on its first call and kept for the others
    (a layer runs once per stream)."""

    def __init__(self, key: tuple[int, ...], rows: BatchRows | None,
                 layers: dict[nn.Module, Layer]) -> None:
        self.key, self.rows, self.layers = key, rows, layers
        self.masks: dict[int, torch.Tensor] = {}

    def mask(self, module: nn.Module, x: torch.Tensor,
             stream: StreamRows | None = None) -> torch.Tensor | None:
        """The scaled mask `module` multiplies `x` (the rows of `stream`) by, or None where
        torch's own dropout applies (eval mode, p = 0, a layer of another model)."""
        layer = self.layers.get(module)
        p = getattr(module, "p", 0.0)
        if layer is None or not module.training or p == 0 or x.dim() != 4:
            return None
        n, c = x.shape[:2]
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
            noise = torch.empty(total, c, 1, 1).bernoulli_(1 - p, generator=gen)
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
        return noise.to(device=x.device, dtype=x.dtype) / (1 - p)


_STEP: contextvars.ContextVar[MaskStep | None] = contextvars.ContextVar(
    "geoddu_dropout_step", default=None)


def current_masks() -> MaskStep | None:
    """The step `dropout_masks` opened, if any."""
    return _STEP.get()


@contextlib.contextmanager
def dropout_masks(
    training: nn.Module, key: Sequence[int], rows: BatchRows | None = None
) -> Iterator[MaskStep]:
    """Within the block, the streams of `training` (a `SubimageTraining`, or a DDU-Net) draw
    one training step's dropout masks from generators seeded by `key` (non-negative ints, e.g.
    (seed, epoch, step)); `rows` says which rows of the one-process batch this rank holds
    (None: all of them)."""
    net = getattr(training, "net", training)
    step = MaskStep(tuple(int(k) for k in key), rows, dropout_layers(net))
    token = _STEP.set(step)
    try:
        yield step
    finally:
        _STEP.reset(token)
