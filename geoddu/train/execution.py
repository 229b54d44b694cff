"""A DDU-Net as training runs it: `SubimageTraining` wraps the model, as DDP wraps a module.

The model's forward is its own (`DDUNet.run`: encode, communicate the mosaic, decode); the
wrapper only says how the stages run (`_Streams`, a `geoddu.models.execution` execution): the
subimages as streams that meet at every BatchNorm layer (`geoddu.train.streams`), under one of
the two BatchNorm rules (`geoddu.train.batchnorm`: statistics pooled over every subimage of the
batch whatever their sizes, as the whole image would give them, or per subimage, as the paper's
reference code does), with the parameter gradients summed in float64
(`geoddu.train.grad_sums`) and the step's dropout masks (`geoddu.train.dropout`). Spatial ranks
(`geoddu.train.spatial`) are the same wrapper over a share of the subimages.

    training = SubimageTraining(model)             # pooled BatchNorm; streams by device
    with dropout_masks(training, (seed, epoch, step)):
        logits = training(x, (2, 2))               # x: (B, C, H, W) cut into 2 x 2
    loss(logits, y).backward()                     # gradients land in the model's .grad
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..models.ddunet import DDUNet
from ..models.execution import as_grid, batch_size, flatten_grid, on_mosaic
from ..partition import Partition
from .batchnorm import POOLED, RULES, PooledNorm, RunningAverage, per_subimage_norm
from .dropout import StreamRows
from .grad_sums import GradSums
from .streams import (
    EXECUTIONS,
    Steps,
    Stream,
    default_execution,
    gather,
    plan_streams,
    run_streams,
    scatter,
    stage_runner,
    training_layout,
)


class SubimageTraining(nn.Module):
    """`net` run for training: `batchnorm` is the rule ("pooled" or "per-subimage"),
    `execution` how the subimages run ("sequential", "stacked"; None: by device)."""

    # Parameter gradients left in float64 for ranks to add (`geoddu.train.spatial`).
    for_ranks = False

    def __init__(self, net: DDUNet, batchnorm: str = POOLED, execution: str | None = None
                 ) -> None:
        super().__init__()
        if batchnorm not in RULES:
            raise ValueError(f"unknown BatchNorm rule {batchnorm!r}; choose from "
                             f"{', '.join(RULES)}")
        if execution is not None and execution not in EXECUTIONS:
            raise ValueError(f"unknown execution {execution!r}; choose from "
                             f"{', '.join(EXECUTIONS)}")
        self.net = net
        self.batchnorm = batchnorm
        self.execution = execution

    def group_of(self, bn: nn.Module) -> Any:
        """The process group a layer's statistics are summed over: none in one process."""
        return None

    def forward(self, x: torch.Tensor,
                partition: Partition | tuple[int, int] | None = None) -> torch.Tensor:
        """Logits of images x (B, C, H, W) cut into `partition`, stitched."""
        partition = self.net.partition_for(x, partition)
        return Partition.stitch(self.forward_subimages(partition.split(x)))

    def forward_subimages(self, parts: Sequence[Sequence[torch.Tensor]],
                          live: Sequence[bool] | None = None) -> list[list[torch.Tensor | None]]:
        """Logits per subimage of a [row][col] grid of subimage batches."""
        flat, grid = flatten_grid(parts)
        return as_grid(self.net.run(flat, self.streams(grid, len(flat)), live), grid)

    def streams(self, grid: tuple[int, int], count: int) -> _Streams:
        """The execution of one forward over `count` subimages of this process on `grid`."""
        return _Streams(self, grid, count)

    def mosaic(self, streams: _Streams, fn: Callable[[torch.Tensor], torch.Tensor],
               maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The communication network over the mosaic of `maps` (this process's grid)."""
        return on_mosaic(lambda m: streams.alone(fn, m), maps, streams.grid)


class _Streams:
    """One forward's execution: stages as streams, one float64 gradient sum for all of it."""

    def __init__(self, training: SubimageTraining, grid: tuple[int, int], count: int) -> None:
        self.training, self.grid, self.count = training, grid, count
        self.sums = GradSums(for_ranks=training.for_ranks)

    def map(self, fn: Callable[..., Any], items: Sequence[tuple], cells: Sequence[int]
            ) -> list[Any]:
        """`fn(*item)` for every item, the items as streams meeting at BatchNorm."""
        if not items:
            return []
        items = [training_layout(item) for item in items]
        per = batch_size(items[0])
        streams = plan_streams(items, self._execution(items[0]), per)
        runner = stage_runner(fn, items[0])
        rows = [StreamRows(tuple(cells[k] for k in s.cells), s.rows, self.count, per)
                for s in streams]
        starts = [lambda a=a, r=r: _logits_out(runner(a, r))
                  for a, r in zip(gather(items, streams), rows, strict=True)]
        return scatter(self._run(starts, streams), streams, len(items))

    def mosaic(self, fn: Callable[[torch.Tensor], torch.Tensor],
               maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.training.mosaic(self, fn, maps)

    def alone(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
              ) -> torch.Tensor:
        """`fn(x)` where x is one piece, not per subimage (the communication network on the
        mosaic): BatchNorm statistics over all of x (the reference does the same there), run
        as a stream of its rows like the subimages (and over ranks through `group_of`)."""
        x = training_layout(x)
        n = x.shape[0]
        stream = Stream((0,), range(n))
        runner = stage_runner(fn, (x,))
        rule = PooledNorm(self.training.group_of)
        return run_streams([lambda: runner((x,), StreamRows((0,), range(n), 1, n))], [stream],
                           rule, self.sums)[0]

    def _execution(self, item: tuple) -> str:
        device = next(t.device for t in _leaves(item))
        return self.training.execution or default_execution(device)

    def _run(self, starts: list[Callable[[], Steps]], streams: list[Stream]) -> list[Any]:
        training = self.training
        if training.batchnorm == POOLED:
            return run_streams(starts, streams, PooledNorm(training.group_of), self.sums)
        running = RunningAverage(training.group_of)
        results = run_streams(starts, streams, _PerSubimage(running), self.sums)
        running.finish()
        return results


class _PerSubimage:
    """The per-subimage rule: each subimage of a stream normalised on its own, right away (so
    the streams run one after another, with no meeting at BatchNorm)."""

    def __init__(self, running: RunningAverage) -> None:
        self.running = running

    def needs_all(self, bn: nn.Module, streams: int) -> bool:
        return False

    def immediate(self, bn: nn.BatchNorm2d, x: torch.Tensor, stream: Stream,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        return per_subimage_norm(bn, x, len(stream.cells), self.running, mask)


def _logits_out(steps: Steps) -> Steps:
    """A stage's result; logits (a stage that returns one tensor: `decode`) in the default
    layout and in float32, converted while still in the cache (the loss would copy a
    channels-last mosaic of them whole, and its softmax and pixel sums want float32, not
    autocast's bfloat16), their gradient back in the training layout and dtype whatever view
    of the loss's gradient it is (the head's bias gradient sums it in its layout's order, and
    the layers below want it channels-last)."""
    out = yield from steps
    if isinstance(out, torch.Tensor):
        return _LogitsOut.apply(out)
    return out


class _LogitsOut(torch.autograd.Function):
    """x contiguous and at least float32 in one copy (none where it already is); backward,
    the gradient in x's layout and dtype, again in one copy."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.dtype = x.dtype
        dtype = torch.promote_types(x.dtype, torch.float32)
        y = x.to(dtype=dtype, memory_format=torch.contiguous_format)
        return y.view_as(y) if y is x else y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return training_layout(grad, ctx.dtype)


def _leaves(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if tree is None:
        return []
    return [t for x in tree for t in _leaves(x)]
