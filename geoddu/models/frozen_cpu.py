"""The CPU's fast path for a fused fp32 model: encoder and decoder traced and frozen (oneDNN
fuses conv + ReLU and pre-packs the weights: about 10% faster on 2 cores), kept per process.

Why a cache: every ``torch.jit.trace`` and ``torch.jit.freeze`` keeps native memory that is
never handed back, even after the modules are gone and with a private compilation unit
(torch 2.13: about 2.6 MB per load of a small checkpoint; ~0.4 MB per trace of eight plain
convs). A process that loads the same model again and again (the QGIS plugin's in-process
runs, a Python loop over scenes, the fuzzer's workers) grew by that much per run, without
bound. Frozen modules hold their weights as constants and nothing mutates them, so models
with the same weights, configuration and input share one pair; memory then grows with the
number of distinct models, not of loads.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__ = ["freeze_for_cpu", "frozen_models_cached"]

# Distinct models kept traced: the model being used and one more (switching between two).
CACHE_SIZE = 2
_cache: OrderedDict[str, tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]] = OrderedDict()
_lock = threading.Lock()


def frozen_models_cached() -> int:
    """How many traced pairs this process holds (for tests and `info`)."""
    return len(_cache)


def _key(net: nn.Module, x: torch.Tensor) -> str:
    """What the frozen graphs depend on: every tensor of the module (names, shapes, dtypes,
    bytes), its configuration and the example input's shape and dtype."""
    h = hashlib.blake2b(digest_size=20)
    h.update(repr((getattr(net, "config", None), tuple(x.shape), str(x.dtype))).encode())
    for name, t in net.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _trace(net: nn.Module, x: torch.Tensor) -> tuple[Any, Any] | None:
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The encoder returns a list (its skips); their count is fixed by the architecture,
            # so the tracer's warning about list outputs does not apply.
            warnings.simplefilter("ignore")
            skips, bottleneck = net.encoder(x)
            # check_trace re-runs each module and compares through torch's DTensor-aware
            # assert_close, whose imports alone cost about 0.9 s per process; the traced
            # graphs are checked by the tests (segment equals the whole-scene forward).
            encoder = torch.jit.freeze(
                torch.jit.trace(net.encoder, x, strict=False, check_trace=False).eval()
            )
            decoder = torch.jit.freeze(
                torch.jit.trace(
                    net.decoder, (bottleneck, list(skips)), check_trace=False
                ).eval()
            )
    except Exception:  # noqa: BLE001 - an untraceable model simply stays eager
        return None
    return encoder, decoder


def freeze_for_cpu(net: nn.Module, x: torch.Tensor) -> bool:
    """Replace ``net.encoder`` and ``net.decoder`` by frozen traces for inputs like ``x``
    (shared with earlier loads of the same weights). Returns whether it did: a model that
    cannot be traced stays eager. Only for CPU models, which are never moved: frozen modules
    bake their weights in as constants."""
    key = _key(net, x)
    with _lock:
        pair = _cache.get(key)
        if pair is not None:
            _cache.move_to_end(key)
    if pair is None:
        pair = _trace(net, x)
        if pair is None:
            return False
        with _lock:
            _cache[key] = pair
            while len(_cache) > CACHE_SIZE:
                _cache.popitem(last=False)
    net.encoder = _TracedEncoder(pair[0], net.encoder)
    net.decoder = _TracedDecoder(pair[1])
    return True


class _TracedEncoder(nn.Module):
    """A frozen encoder that still answers the attributes the engine reads (stride, ...)."""

    def __init__(self, traced: torch.jit.ScriptModule, original: nn.Module) -> None:
        super().__init__()
        self.traced = traced
        self.stride = original.stride
        self.out_channels = original.out_channels

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        skips, bottleneck = self.traced(x)
        return list(skips), bottleneck


class _TracedDecoder(nn.Module):
    def __init__(self, traced: torch.jit.ScriptModule) -> None:
        super().__init__()
        self.traced = traced

    def forward(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        return self.traced(bottleneck, list(skips))
