"""Training (Sec. III-C) and evaluation (Eq. 2) of DDU-Nets.

The names below load on first use: `geoddu.train.request` (the TrainRequest every front builds,
the CLI's option types included) must import without torch, and importing it runs this file.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the submodule that defines it
_EXPORTS = {
    "PRESETS": ".config",
    "TrainConfig": ".config",
    "preset": ".config",
    "parse_grid": ".request",
    "TrainRequest": ".request",
    "evaluate": ".evaluation",
    "make_partition": ".evaluation",
    "Callbacks": ".loop",
    "Trainer": ".loop",
    "TrainResult": ".loop",
    "TrainMesh": ".mesh",
    "resume_training": ".run",
    "start_training": ".run",
    "train_model": ".api",
    "SubimageTraining": ".execution",
    "SpatialTraining": ".spatial",
    "dropout_masks": ".dropout",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value

