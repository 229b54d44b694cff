"""BatchNorm over subimages that run as separate streams (`geoddu.train.streams`).

Two rules for a training-mode BatchNorm layer whose input arrives as one tensor per stream:

* "pooled" (geoddu's default): statistics over every subimage of every patch in the batch, the
  statistics the whole stacked batch would give (and, over the ranks of the layer's process
  group, every rank's subimages). Every stream must reach the layer before any is normalised.
* "per-subimage" (the paper's reference code, one clone per subimage): each subimage normalised
  with the statistics of its own rows (the batch's patches), nothing shared. The running
  statistics move once per step towards the mean over the subimages of their batch mean and
  unbiased variance.

Pooled normalisation is two autograd functions per stream, so that each stream's tensor is read
while it is still in the cache: `_Moments` (the stream's mean and variance, right after the
layer before produced its input) and `_Normalize` (once every stream's moments are in). Both
work on the input centred on the stream's own mean, d = x - mean: the statistics, the
normalisation and the backward pass are then exact even where a channel's mean is large
against its spread (conv outputs of nearly constant images; torch's channels-last statistics
kernel accumulates in float32 and is off there). A stream computes the same numbers whichever
other streams run in the same process, which (with `geoddu.train.grad_sums`) makes a step on
spatial ranks equal one process's step to the last bit.

Which ranks a layer's sums run over is the execution's business (`geoddu.train.spatial`): the
rules take a `GroupOf` function, layer -> process group, where None means "this process
alone" (never "the world"). Backward,
`_Normalize` reduces (torch's eval-mode kernel) and leaves the output gradient in a shared
`_Link`; `_Moments` runs once every stream's reduction is in (autograd orders it so) and writes
the input gradient in two fused passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..parallel.collectives import all_reduce_sum
from . import low_precision
from .grad_sums import tap

POOLED, PER_SUBIMAGE = "pooled", "per-subimage"
RULES = (POOLED, PER_SUBIMAGE)

# Layer -> the process group its statistics are summed over; None: this process alone.
GroupOf = Callable[[nn.Module], Any]


def alone(bn: nn.Module) -> None:
    return None


class _Link:
    """One stream's state shared by its `_Moments` and `_Normalize`: its input centred on its
    mean (x = centred + shift), then the output gradient and its scale invstd * weight (times
    the dropout mask), shaped to multiply it."""

    __slots__ = ("centred", "shift", "grad", "scale")

    def __init__(self) -> None:
        self.centred: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None
        self.grad: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None


def _channels(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


class _Moments(torch.autograd.Function):
    """Per-channel mean and biased variance (float64) of one stream's tensor; keeps the tensor
    centred on its mean in `link` (for `_Normalize` and for the backward pass)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, link: _Link) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1]
        count = x.numel() // c
        f64 = torch.float64
        ctx.count, ctx.link = count, link
        if not count:  # a rank's empty share of a short last batch: it adds nothing
            link.centred, link.shift = x, x.new_zeros(c)
            ctx.save_for_backward(x.new_zeros(c, dtype=f64))
            return x.new_zeros(c, dtype=f64), x.new_zeros(c, dtype=f64)
        if low_precision.is_low(x.dtype):
            # Not centred: x itself carries only 8 bits (bfloat16), far less than what the
            # statistics kernel loses on a large mean (float32 accumulation), and the passes
            # that read x (`low_precision.affine`) subtract the mean in float32 themselves.
            shift, centred = x.new_zeros(c, dtype=torch.float32), x
        else:
            # torch's sums (cascaded: exact to float32 rounding); its BatchNorm statistics
            # kernel accumulates channels-last input naively in float32, off by up to 1e-3.
            shift = x.sum((0, 2, 3), dtype=x.dtype) / count
            centred = x - _channels(shift)
        rest, var = _centred_stats(centred)
        link.centred, link.shift = centred, shift
        ctx.save_for_backward(rest)
        return shift.to(f64) + rest, var

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dmean: torch.Tensor | None, dvar: torch.Tensor | None) -> Any:
        (rest,) = ctx.saved_tensors
        link, ctx.link = ctx.link, None
        centred, n = link.centred, ctx.count
        if not n:
            return torch.zeros_like(centred), None
        dmean = torch.zeros_like(rest) if dmean is None else dmean
        dvar = torch.zeros_like(rest) if dvar is None else dvar
        # d mean/dx = 1/n, d var/dx = 2 (x - mean)/n = 2 (centred - rest)/n: an affine map of
        # the centred input, one fused pass ...
        a = 2 * dvar / n
        dtype = centred.dtype
        if low_precision.is_low(dtype):
            dx = low_precision.affine(centred, rest, a, dmean / n)
            if link.grad is not None:
                low_precision.add_scaled_(dx, link.grad, link.scale)
            return dx, None
        b = dmean / n - rest * a
        dx = torch.addcmul(_channels(b.to(dtype)), centred, _channels(a.to(dtype)))
        if link.grad is not None:  # ... plus the direct term gy * invstd * weight (* mask)
            dx.addcmul_(link.grad, link.scale)
        return dx, None


_CHUNK = 1 << 14  # values per channel that one statistics call accumulates


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of a layer's statistics and parameters for input of `dtype`: float32 for
    bfloat16 and float16 activations (autocast), whose own rounding (2^-9 for bfloat16) would
    be a 0.3 % error in a variance; torch's CPU kernels take that mix (input in the low
    precision, statistics and affine parameters in float32) and accumulate in float32."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _centred_stats(centred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance (float64) of a tensor centred near zero, in one pass without a
    temporary: torch's statistics kernel on slabs of rows, each short enough for its float32
    accumulation, combined in float64."""
    n, c, h, w = centred.shape
    rows = max(1, _CHUNK // w)
    means, variances, counts = [], [], []
    # Low-precision input: float32 running buffers (momentum 0 leaves them as they are) make
    # torch return float32 statistics; without them it rounds them to the input's dtype.
    f32 = stats_dtype(centred.dtype)
    buffers = ((None, None) if f32 == centred.dtype else
               (centred.new_zeros(c, dtype=f32), centred.new_ones(c, dtype=f32)))
    for b in range(n):
        for top in range(0, h, rows):
            slab = centred[b : b + 1, :, top : top + rows]
            m, v = torch.batch_norm_update_stats(slab, *buffers, 0.0)
            means.append(m)
            variances.append(v)
            counts.append(float(slab.shape[2] * w))
    f64 = torch.float64
    if len(means) == 1:
        return means[0].to(f64), variances[0].to(f64)
    weights = torch.tensor(counts, dtype=f64, device=centred.device) / sum(counts)
    m, v = torch.stack(means).to(f64), torch.stack(variances).to(f64)
    mean = weights @ m
    return mean, weights @ (v + (m - mean) ** 2)


class _Normalize(torch.autograd.Function):
    """(x - mean) / sqrt(var + eps) * weight + bias for one stream (`link`) with the pooled
    mean and variance (float64). With a dropout `mask` (rows, channels, 1, 1) the ReLU and the
    mask that follow the layer are folded in: relu(z) * m == relu(z * m) for m >= 0, so the
    output is relu(z * m), one pass forward and one backward fewer than the three layers."""

    @staticmethod
    def forward(ctx: Any, mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, eps: float, link: _Link,
                mask: torch.Tensor | None) -> torch.Tensor:
        centred = link.centred
        invstd = torch.rsqrt(var + eps)
        offset = mean - link.shift.to(mean.dtype)  # x - mean = centred - offset
        dtype = centred.dtype
        if low_precision.is_low(dtype):
            y = low_precision.affine(centred, offset, invstd * weight, bias, mask)
            if mask is not None:
                low_precision.relu_(y)
        else:
            scale = _channels((invstd * weight).to(dtype))
            shift = _channels((bias - offset * invstd * weight).to(dtype))
            if mask is None:
                y = torch.addcmul(shift, centred, scale)
            else:
                y = torch.addcmul(shift * mask, centred, scale * mask).relu_()
        # The backward kernel's statistics in the parameters' dtype (float32 under autocast).
        params = stats_dtype(dtype)
        ctx.save_for_backward(offset.to(params), var.to(params), weight, invstd,
                              *(() if mask is None else (y, mask)))
        ctx.eps, ctx.link = eps, link
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, gy: torch.Tensor) -> Any:
        offset, var, weight, invstd, *masked = ctx.saved_tensors
        link, ctx.link = ctx.link, None
        centred = link.centred
        scale = invstd * weight
        if masked:  # d/dz of relu(z * m): the ReLU's gradient, times the mask
            y, mask = masked
            gy = torch.ops.aten.threshold_backward(gy, y, 0)
        if not centred.numel():  # (torch's kernel dies on an empty channels-last input)
            gw, gb = torch.zeros_like(weight), torch.zeros_like(weight)
        elif not masked:
            # Eval-mode backward, reductions only: sum gy * xhat and sum gy.
            _, gw, gb = torch.ops.aten.native_batch_norm_backward(
                gy, centred, weight, offset, var, None, None, False, ctx.eps,
                [False, True, True])
        else:  # the same per row, weighted by the row's mask
            sums = [torch.ops.aten.native_batch_norm_backward(
                gy[r : r + 1], centred[r : r + 1], weight, offset, var, None, None, False,
                ctx.eps, [False, True, True])[1:] for r in range(gy.shape[0])]
            rows = mask.view(len(sums), -1)
            gw = (torch.stack([s[0] for s in sums]) * rows).sum(0)
            gb = (torch.stack([s[1] for s in sums]) * rows).sum(0)
        link.grad = gy
        link.scale = _channels(scale.to(gy.dtype)) * (masked[1] if masked else 1)
        dmean = -scale * gb
        dvar = -0.5 * scale * invstd * gw
        return dmean, dvar, gw, gb, None, None, None


def _affine(bn: nn.BatchNorm2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.affine:
        return tap(bn.weight), tap(bn.bias)
    c, dtype = x.shape[1], stats_dtype(x.dtype)
    return x.new_ones(c, dtype=dtype), x.new_zeros(c, dtype=dtype)


def _update_running(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
    """torch's running-statistics update with a batch mean and unbiased variance."""
    if not bn.track_running_stats:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = (1.0 / float(bn.num_batches_tracked) if bn.momentum is None
                  else bn.momentum)
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var.to(bn.running_var.dtype), alpha=factor)


class RunningAverage:
    """The per-subimage rule's running statistics: each layer's batch means and unbiased
    variances over the subimages (and, through the layer's `group`, the ranks), averaged and
    applied once per step by `finish`."""

    def __init__(self, group_of: GroupOf = alone) -> None:
        self.group_of = group_of
        self._seen: dict[int, tuple[nn.BatchNorm2d, list[torch.Tensor], list[torch.Tensor]]] = {}

    def add(self, bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> None:
        _, means, variances = self._seen.setdefault(id(bn), (bn, [], []))
        means.append(mean.detach())
        variances.append(var.detach())

    def finish(self) -> None:
        for bn, means, variances in self._seen.values():
            stats = torch.cat([torch.stack(means).sum(0), torch.stack(variances).sum(0),
                               means[0].new_tensor([len(means)])]).double()
            group = self.group_of(bn)
            if group is not None:
                import torch.distributed as dist

                dist.all_reduce(stats, group=group)
            c = means[0].numel()
            _update_running(bn, stats[:c] / stats[-1], stats[c : 2 * c] / stats[-1])
        self._seen.clear()


class PooledNorm:
    """Statistics pooled over every stream run with it, and over the ranks of the layer's group
    (`group_of`) unless `ranks` is False. `arrive(bn, k, x)` takes stream k's moments as it reaches
    the layer, `release(bn, k)` normalises it once all streams (and, through the all-reduce,
    all ranks) have. With `running`, the running statistics go there instead of the layer."""

    def __init__(self, group_of: GroupOf = alone, ranks: bool = True,
                 running: RunningAverage | None = None) -> None:
        self.group_of, self.ranks, self.running = group_of, ranks, running
        # per layer: stream -> (link, mean, variance, count); then the pooled statistics
        self._pending: dict[int, dict[int, tuple[_Link, torch.Tensor, torch.Tensor, int]]]
        self._pending = {}
        self._stats: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def needs_all(self, bn: nn.Module, streams: int) -> bool:
        """Ranks take this path even with one stream each: the same arithmetic as one process
        keeps their steps equal to its step."""
        return streams > 1 or (self.ranks and self.group_of(bn) is not None)

    def immediate(self, bn: nn.BatchNorm2d, x: torch.Tensor, stream: Any,
                  mask: torch.Tensor | None = None) -> torch.Tensor:
        """One stream alone: torch's own kernels, except on channels-last input (their
        statistics are off there, see `_Moments`). `mask`: as `_Normalize`'s."""
        if self.running is None and not _channels_last(x):
            y = bn(x)
            return y if mask is None else torch.relu_(y * mask)
        return normalize_alone(bn, x, self.running, mask)

    def arrive(self, bn: nn.BatchNorm2d, k: int, x: torch.Tensor) -> None:
        link = _Link()
        mean, var = _Moments.apply(x, link)
        self._pending.setdefault(id(bn), {})[k] = (link, mean, var, x.numel() // x.shape[1])

    def release(self, bn: nn.BatchNorm2d, k: int,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        key = id(bn)
        if key not in self._stats:
            self._stats[key] = self._combine(bn, list(self._pending[key].values()))
        link, *_ = self._pending[key].pop(k)
        mean, var = self._stats[key]
        if not self._pending[key]:
            del self._pending[key], self._stats[key]
        weight, bias = _affine(bn, link.centred)
        return _Normalize.apply(mean, var, weight, bias, bn.eps, link, mask)

    def _combine(self, bn: nn.BatchNorm2d, parts: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        # Sums in float64, so that E[x^2] - E[x]^2 does not cancel badly.
        means = torch.stack([p[1] for p in parts])
        counts = means.new_tensor([float(p[3]) for p in parts])
        variances = torch.stack([p[2] for p in parts])
        total = torch.cat([counts @ means, counts @ (variances + means * means),
                           counts.sum().view(1)])
        group = self.group_of(bn) if self.ranks else None
        if group is not None:
            total = all_reduce_sum(total, group)
        c = means.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        count = float(n.detach())  # the same on every rank
        unbiased = var * (count / (count - 1)) if count > 1 else var
        if self.running is not None:
            self.running.add(bn, mean, unbiased)
        else:
            _update_running(bn, mean.detach(), unbiased.detach())
        return mean, var


def normalize_alone(bn: nn.BatchNorm2d, x: torch.Tensor, running: RunningAverage | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """x normalised with its own batch statistics (what training-mode BatchNorm does), by
    `_Moments` and `_Normalize`; the running statistics go to `running` or the layer."""
    rule = PooledNorm(ranks=False, running=running)
    rule.arrive(bn, 0, x)
    return rule.release(bn, 0, mask)


def per_subimage_norm(bn: nn.BatchNorm2d, x: torch.Tensor, cells: int, running: RunningAverage,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """x (all rows of `cells` subimages stacked along the batch) with each subimage
    normalised by its own statistics."""
    masks = [None] * cells if mask is None else mask.chunk(cells)
    outs = [normalize_alone(bn, piece, running, m)
            for piece, m in zip(x.chunk(cells), masks, strict=True)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(
        memory_format=torch.channels_last)
