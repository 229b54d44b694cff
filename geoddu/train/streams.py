"""Training a DDU-Net's subimages as streams that run one after another and meet at BatchNorm.

Why: on a CPU one stacked batch of all subimages trains slower than the subimages one at a time
(benchmarks/train_step.py): a subimage's activations stay in the cache from one layer to the
next, and stacking costs copies (the cat forward, zero-filled slice gradients backward). The
BatchNorm rule must not change with it: statistics pooled over every subimage need all of them
before any is normalised. So a stream runs a stage of the model (`DDUNet.encode`, `decode`,
`communicate`) up to a training-mode BatchNorm layer and waits there; `run_streams` advances
stream 0 up to the layer, then stream 1, ..., lets the rule (`geoddu.train.batchnorm`) pool
their statistics, and resumes them. Between two BatchNorm layers each stream runs alone, and
autograd records the graph in that order, so its backward pass keeps the locality too.

The stage is not written again for this: `torch.fx` traces the model's own method once (its
leaves are torch.nn's layers) and `_Program` runs that graph node by node, pausing at each
training-mode BatchNorm layer. On the way it applies what training adds around the layers:
convolution weights tapped for the float64 gradient sums (`geoddu.train.grad_sums`), the step's
shared dropout masks (`geoddu.train.dropout`), and BatchNorm, ReLU and dropout as one step
where the three follow each other (`geoddu.train.batchnorm`).

A stream may hold several equal-size subimages stacked along the batch: with one stream holding
them all this is the stacked execution (`STACKED`), the one for GPUs, where few large kernels
win; `SEQUENTIAL` (one subimage per stream) is the CPU's.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.fx.node import map_arg

from ..models.execution import shape_key, tree_cat, tree_rows, tree_split
from .dropout import MaskStep, StreamRows, current_masks
from .grad_sums import GradSums, summing, tap

# Yields (BatchNorm layer, its input, the mask of a dropout layer folded into it or None).
Steps = Generator[tuple[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor, Any]

SEQUENTIAL, STACKED = "sequential", "stacked"
EXECUTIONS = (SEQUENTIAL, STACKED)


def default_execution(device: torch.device) -> str:
    """Subimage by subimage on the CPU (measured with benchmarks/train_step.py); stacked
    elsewhere (few large kernels keep a GPU busy)."""
    return SEQUENTIAL if device.type == "cpu" else STACKED


def training_layout(x: Any, dtype: torch.dtype | None = None) -> Any:
    """The layout training runs a subimage in: channels-last on the CPU, where oneDNN's
    convolutions are much faster in it; as it is elsewhere. Trees are converted leaf by leaf
    (a rank receives communicated maps flat, and the decoder's kernels, so its rounding,
    depend on the layout). `dtype`: converted to it as well, in the same copy."""
    if isinstance(x, torch.Tensor):
        layout = (torch.channels_last if x.device.type == "cpu" and x.dim() == 4
                  else torch.preserve_format)
        return x.to(dtype=dtype or x.dtype, memory_format=layout)
    if x is None:
        return None
    return type(x)(training_layout(t, dtype) for t in x)


# -- which streams ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Stream:
    """The rows `rows` (patches) of the subimages `cells` (places in the list of items),
    stacked subimage-major."""

    cells: tuple[int, ...]
    rows: range


def plan_streams(items: Sequence[Any], execution: str, rows: int) -> list[Stream]:
    """`SEQUENTIAL`: one stream per item, all rows. `STACKED`: one stream per group of
    equal-size items. (One stream per row as well would make data-parallel ranks equal one
    process to the last bit too, as spatial ranks do; measured, its overhead cost ~5 % of a step
    at two patches per batch, and it grows with the batch.)"""
    every = range(rows)
    if execution == SEQUENTIAL:
        return [Stream((k,), every) for k in range(len(items))]
    if execution != STACKED:
        raise ValueError(f"unknown execution {execution!r}; choose from {', '.join(EXECUTIONS)}")
    by_shape: dict[Any, list[int]] = {}
    for k, item in enumerate(items):
        by_shape.setdefault(shape_key(item), []).append(k)
    return [Stream(tuple(g), every) for g in by_shape.values()]


def gather(items: Sequence[Any], streams: Sequence[Stream]) -> list[Any]:
    """Per-item trees (all rows) -> each stream's input."""
    out = []
    for s in streams:
        parts = [tree_rows(items[k], s.rows) for k in s.cells]
        out.append(parts[0] if len(parts) == 1 else tree_cat(parts))
    return out


def scatter(results: Sequence[Any], streams: Sequence[Stream], count: int) -> list[Any]:
    """Each stream's result -> per-item trees (all rows, in order)."""
    pieces: list[list[Any]] = [[] for _ in range(count)]
    for s, res in zip(streams, results, strict=True):
        parts = [res] if len(s.cells) == 1 else tree_split(res, len(s.rows))
        for k, part in zip(s.cells, parts, strict=True):
            pieces[k].append(part)
    return [p[0] if len(p) == 1 else tree_cat(p) for p in pieces]


# -- running streams --------------------------------------------------------------------------
def run_streams(
    starts: Sequence[Callable[[], Steps]],
    streams: Sequence[Stream],
    rule: Any,
    sums: GradSums,
) -> list[Any]:
    """Run the streams `starts[k]()` to their end and return their results. `rule` normalises
    at the BatchNorm layers; parameter gradients are summed in `sums`."""
    n = len(starts)
    gens = [start() for start in starts]
    results: list[Any] = [None] * n
    # stream -> the BatchNorm layer it waits at, with the dropout mask folded into it
    waiting: dict[int, tuple[nn.Module, torch.Tensor | None]] = {}

    def advance(k: int, value: torch.Tensor | None) -> None:
        """Run stream k to its end or to a BatchNorm layer that needs every stream."""
        with summing(sums):
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


# -- a stage of the model as a stream ---------------------------------------------------------
class _Tracer(fx.Tracer):
    """Traces a method of the model (not only `forward`) down to torch.nn's layers, for one
    structure of its arguments: a placeholder per tensor, per element of a list of tensors
    ("list" of n), none where it is given None."""

    def __init__(self, method: str, structure: Sequence[Any]) -> None:
        super().__init__()
        self.traced_func_name = method
        self.structure = structure

    def create_args_for_root(self, root_fn: Callable[..., Any], is_module: bool,
                             concrete_args: Any = None) -> tuple[Callable[..., Any], list[Any]]:
        names = list(inspect.signature(root_fn).parameters)[1:]  # after self
        args: list[Any] = [self.root]
        for name, kind in zip(names, self.structure, strict=False):
            if kind is None:
                args.append(None)
            elif kind == "tensor":
                args.append(self.create_proxy("placeholder", name, (), {}))
            else:
                args.append([self.create_proxy("placeholder", f"{name}_{i}", (), {})
                             for i in range(kind)])
        return root_fn, args


class _Program:
    """One traced stage: its graph's nodes, the last use of each value (so that a stream holds
    what autograd holds, no more), and where BatchNorm, ReLU and dropout follow each other."""

    def __init__(self, root: nn.Module, method: str, structure: Sequence[Any]) -> None:
        graph = _Tracer(method, structure).trace(root)
        self.nodes = list(graph.nodes)
        modules = dict(root.named_modules())
        self.targets = {n: n.target for n in self.nodes if n.op == "call_module"}
        last: dict[fx.Node, fx.Node] = {}
        for node in self.nodes:
            for used in node.all_input_nodes:
                last[used] = node
        self.free: dict[fx.Node, list[fx.Node]] = {}
        for value, user in last.items():
            self.free.setdefault(user, []).append(value)
        # BatchNorm -> (its ReLU, that ReLU's dropout) where each is the only user of the last
        self.fused: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
        for node in self.nodes:
            relu = _only_user(node)
            drop = _only_user(relu) if relu is not None else None
            if (drop is not None and isinstance(modules.get(self.targets.get(node)), nn.BatchNorm2d)
                    and isinstance(modules.get(self.targets.get(relu)), nn.ReLU)
                    and isinstance(modules.get(self.targets.get(drop)), nn.Dropout2d)):
                self.fused[node] = (relu, drop)

    def steps(self, modules: dict[str, nn.Module], args: Sequence[Any],
              stream: StreamRows | None) -> Steps:
        """The stage on `args` (flat: the method's arguments, lists expanded) as a generator
        that yields (layer, input, folded dropout mask) at each training-mode BatchNorm layer
        and goes on with the normalised tensor it is sent."""
        masks = current_masks()
        env: dict[fx.Node, Any] = {}
        inputs = iter(args)
        skip: set[fx.Node] = set()
        for node in self.nodes:
            if node in skip:
                pass
            elif node.op == "placeholder":
                env[node] = next(inputs)
            elif node.op == "output":
                return _plain(map_arg(node.args[0], env.__getitem__))
            elif node.op == "call_module":
                module = modules[node.target]
                args_ = map_arg(node.args, env.__getitem__)
                if isinstance(module, nn.BatchNorm2d) and module.training:
                    mask = None
                    if node in self.fused and masks is not None:
                        relu, drop = self.fused[node]
                        mask = masks.mask(modules[drop.target], args_[0], stream)
                    env[node] = yield module, args_[0], mask
                    if mask is not None:  # BatchNorm, ReLU and dropout as one step
                        env[relu] = env[drop] = env[node]
                        skip.update((relu, drop))
                else:
                    env[node] = _call(module, args_, masks, stream)
            else:
                args_ = map_arg(node.args, env.__getitem__)
                kwargs = map_arg(node.kwargs, env.__getitem__)
                if node.op == "call_function":
                    env[node] = node.target(*args_, **kwargs)
                elif node.op == "call_method":
                    env[node] = getattr(args_[0], node.target)(*args_[1:], **kwargs)
                else:  # get_attr
                    raise TypeError(f"{node.target}: attributes are not streamed")
            for value in self.free.get(node, ()):
                env.pop(value, None)
        raise RuntimeError("traced stage without output")


def _plain(out: Any) -> Any:
    """fx's immutable containers as the lists and tuples the method returned."""
    if isinstance(out, tuple):
        return tuple(_plain(x) for x in out)
    if isinstance(out, list):
        return [_plain(x) for x in out]
    return out


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 and users[0].op == "call_module" else None


def _call(module: nn.Module, args: Sequence[Any], masks: MaskStep | None,
          stream: StreamRows | None) -> Any:
    """A torch.nn layer as training runs it: convolution weights tapped for the gradient sums,
    the step's shared dropout mask."""
    if type(module) is nn.Conv2d and module.padding_mode == "zeros":
        return F.conv2d(args[0], tap(module.weight, True), tap(module.bias, True), module.stride,
                        module.padding, module.dilation, module.groups)
    if type(module) is nn.ConvTranspose2d and module.padding_mode == "zeros" and len(args) == 1:
        return F.conv_transpose2d(args[0], tap(module.weight, True), tap(module.bias, True),
                                  module.stride, module.padding, module.output_padding,
                                  module.groups, module.dilation)
    if isinstance(module, nn.Dropout2d) and masks is not None:
        mask = masks.mask(module, args[0], stream)
        if mask is not None:
            return args[0] * mask
    return module(*args)


_PROGRAMS: weakref.WeakKeyDictionary[nn.Module, dict[Any, _Program]] = (
    weakref.WeakKeyDictionary())


def stage_runner(stage: Callable[..., Any], args: Sequence[Any]
                 ) -> Callable[[Sequence[Any], StreamRows | None], Steps]:
    """`stage(*args)` (a method of a model, e.g. `net.decode`) as streams: a function of one
    stream's arguments and rows. Traced once per model, method and argument structure (how
    long the lists are, where the method is given None), then run node by node."""
    root, method = stage.__self__, stage.__name__
    structure = tuple(_structure(a) for a in args)
    programs = _PROGRAMS.setdefault(root, {})
    program = programs.get((method, structure))
    if program is None:
        program = programs[method, structure] = _Program(root, method, structure)
    modules = dict(root.named_modules())
    return lambda a, stream: program.steps(modules, _flatten(a), stream)


def _structure(arg: Any) -> Any:
    if isinstance(arg, list | tuple):
        return len(arg)
    return None if arg is None else "tensor"


def _flatten(args: Sequence[Any]) -> list[Any]:
    flat: list[Any] = []
    for arg in args:
        if isinstance(arg, list | tuple):
            flat.extend(arg)
        else:
            flat.append(arg)
    return flat
