"""Training (Sec. III-C) and evaluation (Eq. 2) of DDU-Nets.

The names below load on first use: `geoddu.train.request` (the TrainRequest every front builds,
the CLI's option types included) must import without torch, and importing it runs this file.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# name -> the submodule that defines it
_EXPORTS = {
    "PRESETS": ".config",
    "TrainConfig": ".config",
    "preset": ".config",
    "parse_grid": ".request",
    "TrainRequest": ".request",
    "evaluate": ".evaluate",
    "make_partition": ".evaluate",
    "Callbacks": ".loop",
    "Trainer": ".loop",
    "TrainResult": ".loop",
    "TrainMesh": ".mesh",
    "resume_training": ".run",
    "start_training": ".run",
    "train_model": ".api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """`geoddu.train.evaluate` is the function, as it was when this package imported everything
    up front: importing the submodule of that name (which Python binds on its package) must
    not replace it."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "evaluate" and isinstance(value, types.ModuleType):
            value = value.evaluate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
