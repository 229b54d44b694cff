"""The random generators' states a `last.pt` carries, so that a resumed run draws what an
uninterrupted one would have drawn (with --deterministic: bit for bit)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, Any]:
    """torch's (CPU and CUDA), Python's and numpy's global generators, as checkpoint values."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python_rng": random.getstate(),
        # Our own numpy draws come from per-epoch generators; the legacy global state is
        # kept for datasets that use np.random directly.
        "numpy_rng": _numpy_state(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` saved (a checkpoint read with weights_only turned tuples into
    lists, and numpy's state into plain values)."""
    torch.set_rng_state(state["torch_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    random.setstate(_as_tuple(state["python_rng"]))
    if state.get("numpy_rng"):
        ns = state["numpy_rng"]
        np.random.set_state(("MT19937", np.asarray(ns["keys"], np.uint32), ns["pos"],
                             ns["has_gauss"], ns["cached_gaussian"]))


def _numpy_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {"keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def _as_tuple(value: Any) -> Any:
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list | tuple) else value
