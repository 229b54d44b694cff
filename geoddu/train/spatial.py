"""Training one DDU-Net across ranks: each rank holds a block of every patch's subimages.

`SpatialTraining` is `SubimageTraining` (`geoddu.train.execution`) over the rank's share:

* the encoder and decoder run on the rank's own subimages only, as one process runs them (one
  stream per subimage on the CPU). The last F bottleneck maps of all ranks are gathered on the
  group's first rank (an autograd function: gather forward, scatter backward), the
  communication network runs there on the whole mosaic, and each rank gets its own cells'
  output back (scatter forward, gather backward);
* BatchNorm keeps the single-process rule: the streams' pooled statistics are summed over the
  ranks of each layer's process group (`group_of`): the encoder's and decoder's over every
  rank holding part of the batch (`bn_group`), the communicated mosaic's over the ranks holding
  other patches (`data_group`) or none. Under the per-subimage rule each subimage is normalised
  on its own, with no all-reduce, and only the running statistics are averaged over the group;
* the loss of a global patch is the single-process loss with its pixel sums all-reduced
  (`geoddu.metrics.DiceLoss(..., reduce=...)`): every rank gets the same value;
* `average_gradients` averages the parameter gradients in one flat all-reduce (off its
  group's root the communication network has none: they count as zeros). DDP over the same
  group would need `find_unused_parameters=True` for that network.

Convention: every rank computes the same global loss and calls `backward()`. The collectives'
backward passes then sum `world` identical copies, so each rank's local gradients are `world`
times its share; averaging over the group gives exactly the single-process gradient (and is
what DDP does anyway). Dropout masks are those one process draws for the whole batch
(`geoddu.train.dropout`: `dropout_masks(training, key, training.batch_rows(...))`), so dropout
does not break the equality either.

Process groups are explicit here: `group=None` is resolved to the default (world) group once,
when the wrapper is built; a layer whose statistics stay in this process has no group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models.ddunet import DDUNet
from ..parallel.group import rank_and_world
from ..partition import Partition, Subimage, balanced_blocks
from .batchnorm import POOLED
from .dropout import BatchRows
from .execution import SubimageTraining, _Streams


class SpatialTraining(SubimageTraining):
    """A DDU-Net whose subimages are spread over the ranks of `group` (None: the default
    group).

    Every rank holds the full set of weights. Rank r owns the r-th balanced contiguous block of
    the partition's subimages (row-major, the same assignment as the segment engine); it
    encodes and decodes only those. `forward(parts, partition)` takes the rank's own subimage
    batches in block order (see `own_parts`) and returns their logits in the same order.
    """

    for_ranks = True

    def __init__(self, net: DDUNet, group: Any = None, bn_group: Any = None,
                 data_group: Any = None, batchnorm: str = POOLED,
                 execution: str | None = None) -> None:
        super().__init__(net, batchnorm, execution)
        self.group = dist.group.WORLD if group is None else group
        bn_group = self.group if bn_group is None else bn_group
        # The single-process rule: statistics over every subimage of every patch in the batch.
        # Encoder and decoder see only the rank's own subimages, so their sums run over every
        # rank holding part of the batch (the whole data x spatial mesh). The communicated
        # mosaic is the same on every rank of a patch group, so its sums run over the ranks
        # holding *other patches* (`data_group`), and not at all without data parallelism.
        spread = [net.encoder, net.decoder]
        mosaic_group = None
        if net.comm is not None and not net.communicates:
            spread.append(net.comm)  # C=N: per subimage, spread like the encoder
        elif net.comm is not None:
            mosaic_group = data_group
        self._groups: dict[nn.Module, Any] = {
            m: bn_group for part in spread for m in part.modules()
            if isinstance(m, nn.BatchNorm2d)}
        if net.comm is not None and mosaic_group is not None:
            self._groups.update(
                (m, mosaic_group) for m in net.comm.modules() if isinstance(m, nn.BatchNorm2d))
        # Bytes this rank sent in the last forward + backward (a ring all-gather or
        # reduce-scatter sends (world - 1) chunks); read by the benchmark.
        self.bytes_sent = 0
        self._partition: Partition | None = None

    def group_of(self, bn: nn.Module) -> Any:
        return self._groups.get(bn)

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

    def forward(self, parts: Sequence[torch.Tensor],  # type: ignore[override]
                partition: Partition) -> list[torch.Tensor]:
        own = self.own_cells(partition)
        if len(parts) != len(own):
            raise ValueError(f"rank {self.rank} owns {len(own)} subimages, got {len(parts)}")
        self.bytes_sent = 0
        self._partition = partition
        return self.net.run(list(parts), self.streams(partition.grid, len(parts)))

    def mosaic(self, streams: _Streams, fn: Callable[[torch.Tensor], torch.Tensor],
               maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        assert self._partition is not None
        return self._communicate(streams, fn, list(maps), self._partition,
                                 self.own_cells(self._partition))

    def _communicate(
        self, streams: _Streams, fn: Callable[[torch.Tensor], torch.Tensor],
        maps: list[torch.Tensor], partition: Partition, own: list[Subimage]
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
        group = self.group
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
            out = streams.alone(fn, mosaic)
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
        flat = torch.cat([b.reshape(-1) for b in bufs])
        dist.broadcast(flat, group=group, group_src=0)
        if dist.get_rank(group) != 0:  # the root's own buffers are saved for its backward
            for b, new in zip(bufs, flat.split([b.numel() for b in bufs]), strict=True):
                b.copy_(new.view_as(b))


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
    over the same group does the same, overlapped with the backward pass.) The gradients of a
    `SpatialTraining`, whose streams leave their sums in float64 (`geoddu.train.grad_sums`), are
    added in float64 and rounded once, as one process rounds its own sum.
    """
    _, world = rank_and_world(group)
    params = [p for p in module.parameters() if p.requires_grad]
    exact = getattr(module, "for_ranks", False)
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
    flat = torch.cat([t.reshape(-1) for t in full])
    dist.all_reduce(flat, group=group)
    flat /= world
    for p, new in zip(params, flat.split([t.numel() for t in full]), strict=True):
        p.grad = new.view(p.shape).to(p.dtype, copy=True)
    return flat.numel() * flat.element_size()
