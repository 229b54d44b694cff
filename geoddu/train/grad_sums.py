"""Parameter gradients of the subimage streams (`geoddu.train.streams`), summed in float64.

Why: a training step on any data x spatial mesh of ranks must equal one process's step. A
stream (one subimage, on the CPU) computes the same numbers whichever process runs it; what
differs is how the streams' gradient contributions to a weight are added up: in which order,
and across ranks. In float32 that order shows in the last bits, and Adam turns the last bits of
a near-zero gradient (most contributions cancelling) into a step of size lr, so runs drift apart
within a few steps. Summed in float64, also across ranks
(`geoddu.train.spatial.average_gradients`), the order no longer shows after the one rounding
to float32: spatial ranks equal one process to the last bit. (Data-parallel ranks hold other
rows in their kernels, which round differently: they equal one process to float rounding.)

Inside `summing(sums)`, `tap(p)` routes the gradient of each use of a parameter into `sums`
instead of autograd's float32 accumulation; at the end of the backward pass the sums land in
`p.grad` (one process) or, for ranks to add before rounding, in `p.grad64`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd.function import once_differentiable


class GradSums:
    """The float64 gradient sums of one training forward's tapped parameters. With
    `for_ranks`, they are left in `p.grad64` for `average_gradients` to add across ranks."""

    def __init__(self, for_ranks: bool = False) -> None:
        self.for_ranks = for_ranks
        self._sums: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._queued = False
        self._casts: dict[tuple[int, torch.dtype], torch.Tensor] = {}

    def cast(self, p: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """p in `dtype`, without autograd, made once per forward (this object's life)."""
        key = (id(p), dtype)
        if key not in self._casts:
            self._casts[key] = p.detach().to(dtype)
        return self._casts[key]

    def add(self, p: torch.Tensor, grad: torch.Tensor) -> None:
        have = self._sums.get(id(p))
        if have is None:
            self._sums[id(p)] = (p, grad.to(torch.float64, copy=True))
        else:
            have[1].add_(grad)
        if not self._queued:  # once per backward pass, run when it ends
            # The one private torch call here: autograd's engine runs a callback queued during
            # a backward pass once that pass has finished (DDP's reducer finalises the same
            # way, torch/nn/parallel/distributed.py). tests/train/test_torch_behaviour.py
            # pins it.
            torch.autograd.Variable._execution_engine.queue_callback(self._flush)
            self._queued = True

    def _flush(self) -> None:
        for p, total in self._sums.values():
            if self.for_ranks:
                old = getattr(p, "grad64", None)
                p.grad64 = total if old is None else old + total
            else:
                g = torch.empty_like(p).copy_(total)  # in the parameter's layout (the optimiser)
                p.grad = g if p.grad is None else p.grad + g
        self._sums.clear()
        self._casts.clear()
        self._queued = False


class _Tap(torch.autograd.Function):
    """The identity on a parameter (or its `value` in another dtype) whose backward hands the
    gradient to a `GradSums`."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, sums: GradSums,
                value: torch.Tensor | None = None) -> torch.Tensor:
        ctx.p, ctx.sums = p, sums
        value = p if value is None else value
        return value.view_as(value)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        ctx.sums.add(ctx.p, grad)
        return None, None, None


_SUMS: contextvars.ContextVar[GradSums | None] = contextvars.ContextVar(
    "geoddu_grad_sums", default=None)


@contextlib.contextmanager
def summing(sums: GradSums) -> Iterator[None]:
    """Within the block, `tap` routes parameter gradients into `sums`."""
    token = _SUMS.set(sums)
    try:
        yield
    finally:
        _SUMS.reset(token)


def tap(p: torch.Tensor | None, autocast: bool = False) -> Any:
    """`p` for a use whose gradient goes to the current `GradSums` (as it is outside
    `summing`, without gradients, or for a frozen parameter).

    `autocast`: for an op that autocast runs in lower precision (a convolution), p already in
    autocast's dtype where autocast is on, cast once per forward: autocast itself would cast it
    again for every subimage (a tapped p is no leaf, so its cache does not apply), 4 % of a
    bf16 step at 4 x 4 subimages. The sums get the same gradients: autocast's cast hands
    back the op's low-precision weight gradient unchanged, only in float32."""
    sums = _SUMS.get()
    if sums is None or p is None or not p.requires_grad or not torch.is_grad_enabled():
        return p
    kind = p.device.type
    if autocast and p.dtype == torch.float32 and torch.is_autocast_enabled(kind):
        return _Tap.apply(p, sums, sums.cast(p, torch.get_autocast_dtype(kind)))
    return _Tap.apply(p, sums)
