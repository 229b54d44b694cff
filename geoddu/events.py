"""Progress events and stage names, defined once for the engines, the CLI and the QGIS bridge.

The engines report ``progress(stage, done, total)``. With ``--progress-format json`` the CLI
writes each report as one JSON object per line on stderr, and ends with a ``done`` or an
``error`` event; the QGIS bridge reads the same lines.
"""

from __future__ import annotations

import json
import sys
from typing import Any

__all__ = [
    "SEGMENT_STAGES",
    "STAGE_LABELS",
    "VECTOR_STAGES",
    "done_event",
    "emit_json",
    "error_event",
    "progress_event",
]

# In the order a run goes through them.
SEGMENT_STAGES = ("encode", "communicate", "decode")
VECTOR_STAGES = ("sieve", "polygonize", "simplify", "write")
STAGE_LABELS = {
    "encode": "encode",
    "communicate": "communicate",
    "decode": "decode + write",
    "sieve": "sieve",
    "polygonize": "polygonize",
    "simplify": "simplify",
    "write": "write polygons",
    "scenes": "scenes",
}


def progress_event(stage: str, done: int, total: int) -> dict[str, Any]:
    return {"event": "progress", "stage": stage, "done": done, "total": total}


def error_event(message: str) -> dict[str, Any]:
    return {"event": "error", "message": message}


def done_event(summary: str, **details: Any) -> dict[str, Any]:
    return {"event": "done", "summary": summary, **details}


def emit_json(event: dict[str, Any]) -> None:
    """One event as one line on stderr, flushed: a reading process sees it at once."""
    sys.stderr.write(json.dumps(event) + "\n")
    sys.stderr.flush()
