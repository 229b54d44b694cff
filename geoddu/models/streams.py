"""Training a DDU-Net's subimages as streams that run one after another and meet at BatchNorm.

Why: on a CPU one stacked batch of all subimages trains slower than the subimages one at a time
(benchmarks/train_step.py): a subimage's activations stay in the cache from one layer to the
next, and stacking costs copies (the cat forward, zero-filled slice gradients backward). The
BatchNorm rule must not change with it: statistics pooled over every subimage need all of them
before any is normalised. So each stream's forward is a generator (`steps`) that yields at every
training-mode BatchNorm layer; `run_streams` advances stream 0 up to the layer, then stream 1,
..., lets the rule (`geoddu.models.stream_norm`) pool their statistics, and resumes them. Between
two BatchNorm layers each stream runs alone, and autograd records the graph in that order, so
its backward pass keeps the locality too.

A stream may hold several equal-size subimages stacked along the batch: with one stream holding
them all this is the stacked execution (`STACKED`), the one for GPUs, where few large kernels
win; `SEQUENTIAL` (one subimage per stream) is the CPU's.

`steps` knows geoddu's blocks (`_RUNNERS`: each the stream form of that block's `forward`);
tests/train/test_train_streams.py checks every encoder against the modules' own forward.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules.batchnorm import _BatchNorm

from ..parallel.dropout import SharedDropout2d, StreamRows, stream_rows
from .blocks import Up
from .grad_sums import GradSums, call, summing
from .resnet import BasicBlock, Bottleneck, ResNetEncoder
from .stream_norm import POOLED, PooledNorm, RunningAverage, per_subimage_norm
from .unet import UNetDecoder, UNetEncoder

if TYPE_CHECKING:
    from .ddunet import DDUNet

# Yields (BatchNorm layer, its input, the mask of a dropout layer folded into it or None).
Steps = Generator[tuple[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor, Any]

SEQUENTIAL, STACKED = "sequential", "stacked"
EXECUTIONS = (SEQUENTIAL, STACKED)


def default_execution(device: torch.device) -> str:
    """Subimage by subimage on the CPU (measured with benchmarks/train_step.py); stacked
    elsewhere, as before (few large kernels keep a GPU busy)."""
    return SEQUENTIAL if device.type == "cpu" else STACKED


def training_layout(x: torch.Tensor) -> torch.Tensor:
    """The layout training runs a subimage in: channels-last on the CPU, where oneDNN's
    convolutions are much faster in it; as it is elsewhere."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


@dataclass(frozen=True)
class Stream:
    """The rows `rows` (patches) of the subimages `cells` (places in the list of subimages),
    stacked subimage-major."""

    cells: tuple[int, ...]
    rows: range


def plan_streams(items: Sequence[Any], execution: str) -> list[Stream]:
    """`SEQUENTIAL`: one stream per subimage, all rows. `STACKED`: one stream per group of
    equal-size subimages. (One stream per row as well would make data-parallel ranks equal one
    process to the last bit too, as spatial ranks do; measured, its overhead cost ~5 % of a step
    at two patches per batch, and it grows with the batch.)"""
    n = batch_size(items[0])
    every = range(n)
    if execution == SEQUENTIAL:
        return [Stream((k,), every) for k in range(len(items))]
    if execution != STACKED:
        raise ValueError(f"unknown execution {execution!r}; choose from {', '.join(EXECUTIONS)}")
    by_shape: dict[Any, list[int]] = {}
    for k, item in enumerate(items):
        by_shape.setdefault(shape_key(item), []).append(k)
    return [Stream(tuple(g), every) for g in by_shape.values()]


def gather(items: Sequence[Any], streams: Sequence[Stream]) -> list[Any]:
    """Per-subimage trees (all rows) -> each stream's input."""
    out = []
    for s in streams:
        parts = [tree_rows(items[k], s.rows) for k in s.cells]
        out.append(parts[0] if len(parts) == 1 else tree_cat(parts))
    return out


def scatter(results: Sequence[Any], streams: Sequence[Stream], count: int) -> list[Any]:
    """Each stream's result -> per-subimage trees (all rows, in order)."""
    pieces: list[list[Any]] = [[] for _ in range(count)]
    for s, res in zip(streams, results, strict=True):
        parts = [res] if len(s.cells) == 1 else tree_split(res, len(s.rows))
        for k, part in zip(s.cells, parts, strict=True):
            pieces[k].append(part)
    return [p[0] if len(p) == 1 else tree_cat(p) for p in pieces]


class SubimageRun:
    """One training forward of a DDU-Net's subimages (a list, all rows each) as streams:
    `__init__` encodes, `maps` hands out each subimage's F bottleneck maps, `put_maps` (after
    the communication network ran on their mosaic) or `communicate_each` (C = N) takes the
    communicated maps back, `decode` returns each subimage's logits."""

    def __init__(self, net: DDUNet, parts: Sequence[torch.Tensor]) -> None:
        self.net, self.count = net, len(parts)
        self.per = batch_size(parts[0])
        self.sums = GradSums(for_ranks=net.sum_over_ranks)
        self.streams = plan_streams(parts, execution_of(net, parts[0]))
        inputs = gather([training_layout(p) for p in parts], self.streams)
        encoded = self._run(lambda x: steps(net.encoder, x), inputs)
        self.skips = [e[0] for e in encoded]
        self.bottlenecks = [e[1] for e in encoded]

    def maps(self) -> list[torch.Tensor]:
        return scatter([self.net.comm_input(b) for b in self.bottlenecks], self.streams,
                       self.count)

    def put_maps(self, maps: Sequence[torch.Tensor]) -> None:
        self._replace(gather(maps, self.streams))

    def communicate_each(self, maps: Sequence[torch.Tensor]) -> None:
        """C = N: the communication network on each subimage's maps alone."""
        self._replace(self._run(lambda m: steps(self.net.comm, m), gather(maps, self.streams)))

    def decode(self) -> list[torch.Tensor]:
        decoder = self.net.decoder
        pairs = list(zip(self.skips, self.bottlenecks, strict=True))
        return scatter(self._run(lambda a: steps(decoder, a[1], a[0]), pairs), self.streams,
                       self.count)

    def _replace(self, communicated: list[torch.Tensor]) -> None:
        # In the training layout whatever layout the maps came back in (a rank receives them
        # flat): the decoder's kernels, and so its rounding, depend on it.
        self.bottlenecks = [training_layout(self.net.replace_maps(b, o.to(b.dtype)))
                            for b, o in zip(self.bottlenecks, communicated, strict=True)]

    def _run(self, start: Callable[[Any], Steps], inputs: list[Any]) -> list[Any]:
        streams, layout = self.streams, (self.count, self.per)
        starts = [lambda a=a: start(a) for a in inputs]
        if self.net.batchnorm == POOLED:
            return run_streams(starts, streams, layout, PooledNorm(), self.sums)
        running = RunningAverage()
        results = run_streams(starts, streams, layout, _PerSubimage(running), self.sums)
        running.finish()
        return results


def run_alone(net: DDUNet, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` in training where x is one piece, not per subimage (the communication network
    on the mosaic): BatchNorm statistics over all of x (the reference does the same there),
    run as streams of its rows like the subimages (and over ranks through a layer's `group`)."""
    x = training_layout(x)
    n = x.shape[0]
    plan = plan_streams([x], execution_of(net, x))
    out = run_streams([lambda a=a: steps(module, a) for a in gather([x], plan)], plan, (1, n),
                      PooledNorm(), GradSums(for_ranks=net.sum_over_ranks))
    return scatter(out, plan, 1)[0]


def execution_of(net: DDUNet, x: torch.Tensor) -> str:
    return net.execution or default_execution(x.device)


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


def steps(module: nn.Module, *args: Any) -> Steps:
    """`module(*args)` as a generator that yields (layer, input) at each training-mode BatchNorm
    layer and goes on with the normalised tensor it is sent."""
    runner = _RUNNERS.get(type(module))
    if runner is not None:
        return (yield from runner(module, *args))
    if isinstance(module, _BatchNorm) and module.training:
        return (yield module, args[0], None)
    if isinstance(module, nn.Sequential):
        return (yield from _sequential(module, *args))
    if any(isinstance(m, _BatchNorm) and m.training for m in module.modules()):
        raise TypeError(f"{type(module).__name__} holds BatchNorm layers but has no stream form "
                        f"in geoddu.models.streams")
    return call(module, *args)


def run_streams(
    starts: Sequence[Callable[[], Steps]],
    streams: Sequence[Stream],
    layout: tuple[int, int],
    rule: Any,
    sums: GradSums,
) -> list[Any]:
    """Run the streams `starts[k]()` to their end and return their results. `streams[k]` says
    which rows stream k holds of this process's `layout` (subimages, rows each): the rows of
    the dropout masks that belong to it. `rule` normalises at the BatchNorm layers; parameter
    gradients are summed in `sums` (`geoddu.models.grad_sums`)."""
    n = len(starts)
    gens = [start() for start in starts]
    rows = [StreamRows(s.cells, s.rows, *layout) for s in streams]
    results: list[Any] = [None] * n
    # stream -> the BatchNorm layer it waits at, with the dropout mask folded into it
    waiting: dict[int, tuple[nn.Module, torch.Tensor | None]] = {}

    def advance(k: int, value: torch.Tensor | None) -> None:
        """Run stream k to its end or to a BatchNorm layer that needs every stream."""
        with stream_rows(rows[k]), summing(sums):
            while True:
                try:
                    bn, x, mask = gens[k].send(value)
                except StopIteration as stop:
                    results[k] = stop.value
                    return
                if rule.needs_all(bn, n):
                    break
                value = rule.immediate(bn, x, streams[k], mask)
        rule.arrive(bn, k, x)
        waiting[k] = (bn, mask)

    for k in range(n):
        advance(k, None)
    while waiting:
        if len(waiting) != n or len({id(bn) for bn, _ in waiting.values()}) != 1:
            raise RuntimeError("the subimage streams reached different BatchNorm layers")
        # Resumed in reverse order of arrival: the last stream's tensor is still in the cache.
        order = list(reversed(waiting))
        layers = dict(waiting)
        waiting.clear()
        for k in order:
            bn, mask = layers[k]
            with summing(sums):
                value = rule.release(bn, k, mask)
            advance(k, value)
    return results


class _ContiguousGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return training_layout(grad)


def _sequential(seq: nn.Sequential, x: torch.Tensor) -> Steps:
    children = list(seq)
    i = 0
    while i < len(children):
        child = children[i]
        if (isinstance(child, _BatchNorm) and child.training and i + 2 < len(children)
                and isinstance(children[i + 1], nn.ReLU)
                and isinstance(children[i + 2], SharedDropout2d)):
            mask = children[i + 2].shared_mask(x)
            if mask is not None:  # BatchNorm, ReLU and dropout as one step (stream_norm)
                x = yield child, x, mask
                i += 3
                continue
        x = yield from steps(child, x)
        i += 1
    return x


def _up(up: Up, x: torch.Tensor, skip: torch.Tensor | None = None) -> Steps:
    x = call(up.up, x)
    if skip is not None:
        x = torch.cat([skip, x], dim=1)
    return (yield from steps(up.conv, x))


def _unet_encoder(enc: UNetEncoder, x: torch.Tensor) -> Steps:
    skips = [(yield from steps(enc.inc, x))]
    for down in enc.downs:
        skips.append((yield from steps(down, skips[-1])))
    return skips[:-1], skips[-1]


def _unet_decoder(dec: UNetDecoder, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> Steps:
    x = bottleneck
    for up, skip in zip(dec.ups, reversed(skips), strict=True):
        x = yield from steps(up, x, skip)
    if dec.final is not None:
        x = yield from steps(dec.final, x)
    # Logits in the default layout, converted while still in the cache (the loss would copy a
    # channels-last mosaic of them whole); their gradient back in the training layout whatever
    # view of the loss's gradient it is (the head's bias gradient sums it in its layout's
    # order, and the layers below want it channels-last).
    return _ContiguousGrad.apply(call(dec.head, x).contiguous())


def _basic_block(block: BasicBlock, x: torch.Tensor) -> Steps:
    identity = x if block.downsample is None else (yield from steps(block.downsample, x))
    out = block.relu((yield from steps(block.bn1, call(block.conv1, x))))
    out = yield from steps(block.bn2, call(block.conv2, out))
    return block.relu(out + identity)


def _bottleneck(block: Bottleneck, x: torch.Tensor) -> Steps:
    identity = x if block.downsample is None else (yield from steps(block.downsample, x))
    out = block.relu((yield from steps(block.bn1, call(block.conv1, x))))
    out = block.relu((yield from steps(block.bn2, call(block.conv2, out))))
    out = yield from steps(block.bn3, call(block.conv3, out))
    return block.relu(out + identity)


def _resnet_encoder(enc: ResNetEncoder, x: torch.Tensor) -> Steps:
    s1 = enc.relu((yield from steps(enc.bn1, call(enc.conv1, x))))
    s2 = yield from steps(enc.layer1, enc.maxpool(s1))
    s3 = yield from steps(enc.layer2, s2)
    s4 = yield from steps(enc.layer3, s3)
    return [s1, s2, s3], (yield from steps(enc.inter_conv, s4))


_RUNNERS: dict[type, Callable[..., Steps]] = {
    Up: _up,
    UNetEncoder: _unet_encoder,
    UNetDecoder: _unet_decoder,
    BasicBlock: _basic_block,
    Bottleneck: _bottleneck,
    ResNetEncoder: _resnet_encoder,
}


# -- trees of tensors with a batch axis first (a subimage's skips and bottleneck) -------------
def shape_key(item: Any) -> Any:
    if isinstance(item, torch.Tensor):
        return tuple(item.shape)
    return tuple(shape_key(x) for x in item)


def batch_size(item: Any) -> int:
    return item.shape[0] if isinstance(item, torch.Tensor) else batch_size(item[0])


def tree_rows(tree: Any, rows: range) -> Any:
    if isinstance(tree, torch.Tensor):
        return tree[rows.start : rows.stop]
    return type(tree)(tree_rows(t, rows) for t in tree)


def tree_cat(items: list[Any]) -> Any:
    if isinstance(items[0], torch.Tensor):
        return torch.cat(items, dim=0)
    return type(items[0])(tree_cat([it[k] for it in items]) for k in range(len(items[0])))


def tree_split(tree: Any, n: int) -> list[Any]:
    """Every tensor of a tree cut into pieces of n rows (torch.split: one autograd node, whose
    backward is one cat rather than a zero-filled full gradient per piece)."""
    if isinstance(tree, torch.Tensor):
        return list(tree.split(n))
    split = [tree_split(t, n) for t in tree]
    return [type(tree)(s[k] for s in split) for k in range(len(split[0]))]
