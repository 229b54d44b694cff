"""Progress events and stage names, defined once for the engines, the trainer, the CLI and the
QGIS bridge.

The engines report ``progress(stage, done, total)``. With ``--progress json`` (or its first
name, ``--progress-format json``) `geoddu segment` and `geoddu train` write each report as one
JSON object per line on stderr, and end with a ``done`` or an ``error`` event; the QGIS bridge
reads the same lines. A training run also reports ``start`` (once, before the first batch),
``progress`` for the stages "train" (a batch) and "validate", and ``epoch`` (each epoch's row of
history.json).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any

__all__ = [
    "SEGMENT_STAGES",
    "SAMPLE_STAGES",
    "STAGE_LABELS",
    "TRAIN_STAGES",
    "VECTOR_STAGES",
    "done_event",
    "emit_json",
    "epoch_event",
    "error_event",
    "progress_event",
    "start_event",
]

# In the order a run goes through them.
SEGMENT_STAGES = ("encode", "communicate", "decode")
VECTOR_STAGES = ("sieve", "polygonize", "simplify", "write")
TRAIN_STAGES = ("train", "validate")
SAMPLE_STAGES = ("count", "pick", "write_points")
STAGE_LABELS = {
    "encode": "encode",
    "communicate": "communicate",
    "decode": "decode + write",
    "sieve": "sieve",
    "polygonize": "polygonize",
    "simplify": "simplify",
    "write": "write polygons",
    "scenes": "scenes",
    "count": "count pixels",
    "pick": "pick points",
    "write_points": "write points",
    "train": "train",
    "validate": "validate",
}


def progress_event(stage: str, done: int, total: int) -> dict[str, Any]:
    return {"event": "progress", "stage": stage, "done": done, "total": total}


def start_event(info: Mapping[str, Any]) -> dict[str, Any]:
    """A training run starts: ``start_epoch`` (epochs already done), ``epochs``, ``batches``
    per epoch, ``grid``, ``device``, ``precision`` (fp32, bf16, fp16), ``amp`` (fp16's gradient
    scaling on), ``ranks``, ``spatial_ranks``."""
    return {"event": "start", **info}


def epoch_event(row: Mapping[str, Any], epochs: int) -> dict[str, Any]:
    """An epoch ended: its row of history.json (``epoch``, ``train_loss``, ``val_loss``,
    ``val_miou``, ``iou_<class>``, ``lr``, ``seconds``, ``best``) and the run's ``epochs``."""
    return {"event": "epoch", "epochs": epochs, **row}


def error_event(message: str) -> dict[str, Any]:
    return {"event": "error", "message": message}


def done_event(summary: str, **details: Any) -> dict[str, Any]:
    return {"event": "done", "summary": summary, **details}


def emit_json(event: dict[str, Any]) -> None:
    """One event as one line on stderr, flushed: a reading process sees it at once. A number
    that is not finite (a validation mIoU with no class present) is written as null: JSON has
    no NaN."""
    sys.stderr.write(json.dumps(_finite(event)) + "\n")
    sys.stderr.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
