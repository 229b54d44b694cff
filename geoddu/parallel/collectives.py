"""Collectives that autograd can differentiate, on public torch.distributed calls only."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .group import rank_and_world


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """The sum of `x` over the ranks of `group` (None: the default group, as in torch),
    differentiable: with every rank using the sum in its own loss, the gradient of each
    rank's `x` is the sum of every rank's upstream gradient. For small tensors (statistics,
    loss sums); `x` itself is left as it is."""
    if rank_and_world(group)[1] == 1:
        return x
    return _AllReduceSum.apply(x, group)


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        ctx.group = group
        total = x.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        total = grad.clone()
        dist.all_reduce(total, group=ctx.group)
        return total, None
