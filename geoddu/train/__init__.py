"""Training (Sec. III-C) and evaluation (Eq. 2) of DDU-Nets."""

from .config import PRESETS, TrainConfig, parse_grid, preset
from .evaluate import evaluate, make_partition
from .loop import Callbacks, Trainer, TrainResult
from .mesh import TrainMesh
from .run import resume_training, start_training

__all__ = [
    "PRESETS",
    "Callbacks",
    "TrainConfig",
    "TrainResult",
    "TrainMesh",
    "Trainer",
    "evaluate",
    "make_partition",
    "parse_grid",
    "preset",
    "resume_training",
    "start_training",
]
