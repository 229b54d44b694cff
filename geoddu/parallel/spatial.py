"""Training one DDU-Net across ranks: each rank holds a block of every patch's subimages.

The building blocks of spatially-distributed training (the training loop itself lives in
`geoddu.train`):

* `SpatialDDUNet` runs the encoder and decoder on the rank's own subimages only. The last F
  bottleneck maps of all ranks are gathered on the group's first rank (an autograd function:
  gather forward, scatter backward), the communication network runs there on the whole
  mosaic, and each rank gets its own cells' output back (scatter forward, gather backward).
* `SpatialBatchNorm2d` keeps the single-process rule: batch statistics over every subimage of
  every patch in the batch, so the per-channel sum and sum of squares are all-reduced
  (autograd-aware) across the group. Running statistics come out identical on every rank.
  The rank's subimages run as one process runs them (`geoddu.models.streams`: one stream per
  subimage on the CPU); with several streams the streams' pooled BatchNorm
  (`geoddu.models.stream_norm`) all-reduces the same sums over the layer's `group`. Under the
  per-subimage rule each subimage is normalised on its own, with no all-reduce, and only the
  running statistics are averaged over the group.
* the loss of a global patch is the single-process loss with its pixel sums all-reduced
  (`geoddu.metrics.DiceLoss(..., reduce=...)`): every rank gets the same value.
* `average_gradients` averages the parameter gradients in one flat all-reduce (off its
  group's root the communication network has none: they count as zeros). DDP over the same
  group would need `find_unused_parameters=True` for that network.

Convention: every rank computes the same global loss and calls `backward()`. The collectives'
backward passes then sum `world` identical copies, so each rank's local gradients are `world`
times its share; averaging over the group gives exactly the single-process gradient (and is
what DDP does anyway). Dropout layers become `SharedDropout2d` (`geoddu.parallel.dropout`):
inside `dropout_masks(model, key, model.batch_rows(...))` every rank keeps its rows of the masks
one process draws for the whole batch, so dropout does not break the equality either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as fcol
import torch.nn.functional as F
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..models.ddunet import DDUNet
from ..models.streams import SubimageRun
from ..partition import Partition, Subimage, balanced_blocks
from .dropout import BatchRows, share_dropout
from .group import rank_and_world


def all_reduce_sum(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Sum of `x` over the group, differentiable (an all-gather whose backward reduce-scatters;
    torch 2.13 has no autograd all-reduce that does not warn). For small tensors: statistics."""
    _, world = rank_and_world(group)
    if world == 1:
        return x
    group = group if group is not None else dist.group.WORLD
    gathered = fcol.all_gather_single_autograd(x.reshape(1, -1), 0, group)
    return gathered.view(world, -1).sum(0).view(x.shape)


class SpatialBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics cover the whole group's batch of subimages.

    Sums are accumulated in float64 (one all-reduce of 2C+1 values), so E[x^2] - E[x]^2 does
    not cancel badly; normalising and the running-statistics update are the same arithmetic
    as `nn.BatchNorm2d`, and identical on every rank.
    """

    def __init__(self, *args: Any, group: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, group: Any = None) -> SpatialBatchNorm2d:
        new = cls(
            bn.num_features,
            bn.eps,
            bn.momentum,
            bn.affine,
            bn.track_running_stats,
            group=group,
            device=bn.weight.device if bn.affine else None,
        )
        new.load_state_dict(bn.state_dict())
        new.train(bn.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and self.track_running_stats:
            return super().forward(x)
        c = x.shape[1]
        n_local = x.numel() // c
        s = x.sum(dim=(0, 2, 3), dtype=torch.float64)
        ss = (x * x).sum(dim=(0, 2, 3), dtype=torch.float64)
        count = torch.tensor([float(n_local)], dtype=torch.float64, device=x.device)
        total = all_reduce_sum(torch.cat([s, ss, count]), self.group)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
                else:
                    factor = self.momentum
                count_all = float(n)  # the same on every rank
                unbiased = var * (count_all / (count_all - 1)) if count_all > 1 else var
                self.running_mean.mul_(1 - factor).add_(mean.to(x.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.to(x.dtype), alpha=factor)
        shape = (1, c, 1, 1)
        y = (x - mean.to(x.dtype).view(shape)) * torch.rsqrt(var.to(x.dtype) + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def convert_batchnorm(module: nn.Module, group: Any = None) -> nn.Module:
    """Replace every `nn.BatchNorm2d` under `module` by a `SpatialBatchNorm2d` (same state)."""
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, SpatialBatchNorm2d):
            setattr(module, name, SpatialBatchNorm2d.from_batchnorm(child, group))
        else:
            convert_batchnorm(child, group)
    return module


class SpatialDDUNet(nn.Module):
    """A DDU-Net whose subimages are spread over the ranks of `group`.

    Every rank holds the full set of weights. Rank r owns the r-th balanced contiguous block of
    the partition's subimages (row-major, the same assignment as the segment engine); it
    encodes and decodes only those. `forward(parts, partition)` takes the rank's own subimage
    batches in block order (see `own_parts`) and returns their logits in the same order.
    """

    def __init__(
        self, net: DDUNet, group: Any = None, bn_group: Any = None, data_group: Any = None
    ) -> None:
        super().__init__()
        self.net = net
        self.group = group
        # The single-process rule: statistics over every subimage of every patch in the batch.
        # Encoder and decoder see only the rank's own subimages, so their sums run over every
        # rank holding part of the batch: `bn_group` (the whole data x spatial mesh; default:
        # the patch group). The communicated mosaic is the same on every rank of a patch group,
        # so its BatchNorm sums run over the ranks holding *other patches* (`data_group`) and
        # not at all without data parallelism.
        bn_group = group if bn_group is None else bn_group
        convert_batchnorm(net.encoder, bn_group)
        convert_batchnorm(net.decoder, bn_group)
        if net.comm is not None and not net.communicates:
            convert_batchnorm(net.comm, bn_group)  # C=N: per subimage, spread like the encoder
        elif net.comm is not None and data_group is not None:
            convert_batchnorm(net.comm, data_group)
        # Dropout masks as one process draws them (inside `dropout_masks`).
        share_dropout(net)
        # Parameter gradients summed in float64 up to `average_gradients`, so the order in
        # which ranks add them does not show (geoddu.models.grad_sums).
        net.sum_over_ranks = True
        # Bytes this rank sent in the last forward + backward (a ring all-gather or
        # reduce-scatter sends (world - 1) chunks); read by the benchmark.
        self.bytes_sent = 0

    @property
    def rank(self) -> int:
        return rank_and_world(self.group)[0]

    @property
    def world(self) -> int:
        return rank_and_world(self.group)[1]

    def own_cells(self, partition: Partition) -> list[Subimage]:
        return balanced_blocks(partition.subimages(), self.world)[self.rank]

    def own_parts(self, x: torch.Tensor, partition: Partition) -> list[torch.Tensor]:
        """The rank's subimages of a whole batch (B, C, H, W) (or labels (B, H, W))."""
        return [
            x[..., c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width]
            for c in self.own_cells(partition)
        ]

    def batch_rows(self, partition: Partition, patches: slice, batch: int) -> BatchRows:
        """Where this rank's stacked subimages sit in one process's batch: its block of
        `partition`'s subimages of the patches `patches` (its share of a global `batch`)."""
        cols = partition.grid[1]
        return BatchRows(
            cells=tuple(c.row * cols + c.col for c in self.own_cells(partition)),
            n_cells=len(partition),
            patches=range(batch)[patches],
            n_patches=batch,
        )

    def forward(self, parts: Sequence[torch.Tensor], partition: Partition) -> list[torch.Tensor]:
        net = self.net
        own = self.own_cells(partition)
        if len(parts) != len(own):
            raise ValueError(f"rank {self.rank} owns {len(own)} subimages, got {len(parts)}")
        self.bytes_sent = 0
        # The subimages run as one process runs them (geoddu.models.streams); the BatchNorm
        # layers' `group` makes the pooled statistics span every rank.
        run = SubimageRun(net, list(parts))
        if net.comm is not None:
            if net.communicates:
                run.put_maps(self._communicate(run.maps(), partition, own))
            else:
                run.communicate_each(run.maps())
        return run.decode()

    def _communicate(
        self, maps: list[torch.Tensor], partition: Partition, own: list[Subimage]
    ) -> list[torch.Tensor]:
        """Gather every rank's F maps on the group's first rank, run the communication network
        there on the stitched mosaic, and scatter each rank its own cells' output.

        Why on one rank and not on every rank after an all-gather (measured with
        benchmarks/distributed_scaling.py, DDU-Net(4,64,Y), 1024^2 patch, 4 x 4 subimages,
        gloo): with a core per rank the two take the same time (2 ranks: 88 vs 92 ms for the
        stage, forward + backward); where ranks share compute, replicating the network's
        forward and backward on every rank costs that much more (4 ranks on 2 cores: 90 vs
        199 ms). One rank also sends fewer bytes in all ((world - 1) chunks each way instead
        of world x (world - 1)) and holds the mosaic's activations once instead of on every
        rank. The two collectives are bounded by the same timeout as the rest.
        """
        net, world, stride = self.net, self.world, self.net.stride
        batch = maps[0].shape[0] if maps else 0
        feats = net.comm_features
        blocks = balanced_blocks(partition.subimages(), world)
        size = {c.index: batch * feats * (c.height // stride) * (c.width // stride)
                for b in blocks for c in b}
        # Blocks differ by up to one subimage: every chunk is padded to the largest.
        chunk = max(sum(size[c.index] for c in b) for b in blocks)
        ref = maps[0] if maps else next(net.parameters())
        flat = torch.cat([m.reshape(-1) for m in maps]) if maps else ref.new_zeros(0)
        flat = F.pad(flat, (0, chunk - flat.numel()))
        group = self.group if self.group is not None else dist.group.WORLD
        root = self.rank == 0
        rows = _GatherToRoot.apply(flat, world, group) if world > 1 else flat.view(1, -1)
        if world > 1:
            # forward gather/scatter and their backward scatter/gather
            self.bytes_sent += 2 * chunk * flat.element_size() * ((world - 1) if root else 1)
        if root:
            cells: dict[tuple[int, int], torch.Tensor] = {}
            for r, b in enumerate(blocks):
                off = 0
                for c in b:
                    h, w = c.height // stride, c.width // stride
                    cells[c.index] = rows[r, off : off + size[c.index]].view(batch, feats, h, w)
                    off += size[c.index]
            n_rows, n_cols = partition.grid
            mosaic = Partition.stitch([[cells[(i, j)] for j in range(n_cols)]
                                       for i in range(n_rows)])
            out = net.communicate_maps(mosaic)
            coarse = partition.scaled(stride)
            ro, co = coarse.row_offsets, coarse.col_offsets
            packed = []
            for b in blocks:
                pieces = [out[..., ro[c.row] : ro[c.row] + c.height // stride,
                              co[c.col] : co[c.col] + c.width // stride].reshape(-1) for c in b]
                one = torch.cat(pieces) if pieces else flat.new_zeros(0)
                packed.append(F.pad(one, (0, chunk - one.numel())))
            send = torch.stack(packed)
        else:
            send = rows  # an empty placeholder: only the root sends; keeps the graph whole
        mine = _ScatterFromRoot.apply(send, chunk, group) if world > 1 else send[0]
        if world > 1 and net.comm.training:
            # Only the root updated the network's BatchNorm running statistics: share them, so
            # every rank keeps identical buffers (two small broadcasts, one per dtype).
            _broadcast_buffers(net.comm, group)
        result, off = [], 0
        for c in own:
            h, w = c.height // stride, c.width // stride
            result.append(mine[off : off + size[c.index]].view(batch, feats, h, w))
            off += size[c.index]
        return result


def _broadcast_buffers(module: nn.Module, group: Any) -> None:
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for b in module.buffers():
        by_dtype.setdefault(b.dtype, []).append(b)
    for bufs in by_dtype.values():
        flat = _flatten_dense_tensors(bufs)
        dist.broadcast(flat, group=group, group_src=0)
        if dist.get_rank(group) != 0:  # the root's own buffers are saved for its backward
            for b, new in zip(bufs, _unflatten_dense_tensors(flat, bufs), strict=True):
                b.copy_(new)


class _GatherToRoot(torch.autograd.Function):
    """Forward: every rank's chunk to the group's rank 0 as a (world, n) tensor ((0, n) on the
    others). Backward: the root's gradient rows scattered back."""

    @staticmethod
    def forward(ctx: Any, flat: torch.Tensor, world: int, group: Any) -> torch.Tensor:
        ctx.group = group
        root = dist.get_rank(group) == 0
        rows = [torch.empty_like(flat) for _ in range(world)] if root else None
        if flat.numel():  # an empty batch is empty on every rank of the group
            dist.gather(flat.contiguous(), rows, group=group, group_dst=0)
        return torch.stack(rows) if root else flat.new_zeros(0, flat.numel())

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        n = grad.shape[1]
        out = grad.new_empty(n)
        if n:
            rows = list(grad.contiguous().unbind(0)) if dist.get_rank(ctx.group) == 0 else None
            dist.scatter(out, rows, group=ctx.group, group_src=0)
        return out, None, None


class _ScatterFromRoot(torch.autograd.Function):
    """Forward: row r of the root's (world, n) tensor to rank r. Backward: the gradients of
    the rows gathered back on the root (the others return an empty gradient)."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor, n: int, group: Any) -> torch.Tensor:
        ctx.group, ctx.world = group, dist.get_world_size(group)
        out = rows.new_empty(n)
        if n:
            root = dist.get_rank(group) == 0
            dist.scatter(out, list(rows.contiguous().unbind(0)) if root else None, group=group,
                         group_src=0)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        n = grad.numel()
        root = dist.get_rank(ctx.group) == 0
        rows = [torch.empty_like(grad) for _ in range(ctx.world)] if root else None
        if n:
            dist.gather(grad.contiguous(), rows, group=ctx.group, group_dst=0)
        return (torch.stack(rows) if root else grad.new_zeros(0, n)), None, None


def average_gradients(module: nn.Module, group: Any = None) -> int:
    """Average parameter gradients over the group in one all-reduce; returns bytes reduced.

    With the every-rank-same-loss convention this yields the single-process gradient. (DDP
    over the same group does the same, overlapped with the backward pass.) A DDU-Net whose
    streams leave their gradient sums in float64 (`sum_over_ranks`, geoddu.models.grad_sums)
    has them added in float64 and rounded once, as one process rounds its own sum.
    """
    _, world = rank_and_world(group)
    params = [p for p in module.parameters() if p.requires_grad]
    exact = any(getattr(m, "sum_over_ranks", False) for m in module.modules())
    grads: list[torch.Tensor | None] = []
    for p in params:
        g, wide = p.grad, getattr(p, "grad64", None)
        if wide is not None:
            del p.grad64
            g = wide if g is None else wide + g
        grads.append(g)
    if world == 1:
        for p, g in zip(params, grads, strict=True):
            if g is not None:
                p.grad = torch.empty_like(p).copy_(g)
        return 0
    dtype = torch.float64 if exact else None
    # No gradient: e.g. the communication network off its group's root.
    full = [torch.zeros_like(p, dtype=dtype) if g is None else g.to(dtype or p.dtype)
            for p, g in zip(params, grads, strict=True)]
    flat = _flatten_dense_tensors(full)
    dist.all_reduce(flat, group=group)
    flat /= world
    for p, new in zip(params, _unflatten_dense_tensors(flat, full), strict=True):
        p.grad = new.to(p.dtype, copy=True)
    return flat.numel() * flat.element_size()
