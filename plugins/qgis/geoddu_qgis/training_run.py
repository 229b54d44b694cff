"""A training run as the plugin describes it (a dict of ``geoddu train``'s options), the
command line for it, the epoch lines the command prints, and what a finished run reached.

Plain Python (no QGIS import), used by both engines of :mod:`.engine_bridge`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable

#: A training run, described once (what ``geoddu train`` takes, by its option names with ``_``
#: for ``-``): ``dataset`` (only ``folder`` here), ``data``, ``run_dir`` (RUN_DIR: best.pt,
#: last.pt, history.json), ``arch``, ``base_channels``, ``epochs``, ``batch_size``,
#: ``subimages`` (P or "NxM"), ``lr``, ``seed``, ``device``, ``patch_size``, ``class_column``,
#: ``classes_file``, ``val_fraction``, ``resume`` (continue RUN_DIR/last.pt: only ``epochs``,
#: ``device`` and ``data`` apply) and ``overwrite``. A field left out is geoddu's default.
TRAIN_FIELDS = ("dataset", "data", "run_dir", "arch", "base_channels", "epochs", "batch_size",
                "subimages", "lr", "seed", "device", "patch_size", "class_column",
                "classes_file", "val_fraction", "resume", "overwrite")
#: Fields that only a new run takes (a resumed run keeps what it was started with).
TRAIN_NEW_ONLY = ("dataset", "arch", "base_channels", "batch_size", "subimages", "lr", "seed",
                  "patch_size", "class_column", "classes_file", "val_fraction")
#: What ``geoddu train`` prints after each epoch (rich, plain when not on a terminal).
EPOCH_LINE = re.compile(
    r"^epoch\s+(?P<epoch>\d+)/(?P<epochs>\d+)\s+train loss\s+(?P<train_loss>\S+)"
    r"\s+val loss\s+(?P<val_loss>\S+)\s+val mIoU\s+(?P<val_miou>\S+)(?P<rest>.*)$")
#: Tags written by the trainer: best.pt (lowest validation loss), last.pt (resumable).
BEST, LAST = "best.pt", "last.pt"
EpochFn = Callable[[dict], None]


def train_summary(run_dir: str) -> dict:
    """What a finished (or stopped) run reached, from RUN_DIR/history.json (the trainer writes
    it atomically after every epoch): ``epochs_run``, ``best_epoch``, ``best_val_loss``,
    ``best_val_miou`` (None when unknown) and ``best``/``last``, the checkpoints' paths."""
    try:
        with open(os.path.join(run_dir, "history.json"), encoding="utf-8") as stream:
            history = json.load(stream)
    except (OSError, ValueError):
        history = []
    rows = [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []
    best = [row for row in rows if row.get("best")]
    best_row = best[-1] if best else {}
    return {
        "epochs_run": int(rows[-1].get("epoch", len(rows))) if rows else 0,
        "best_epoch": best_row.get("epoch"),
        "best_val_loss": number(best_row.get("val_loss")),
        "best_val_miou": number(best_row.get("val_miou")),
        "best": os.path.join(run_dir, BEST),
        "last": os.path.join(run_dir, LAST),
    }


def number(value) -> float | None:
    """A finite float, or None (missing, not a number, NaN)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if value == value else None  # NaN: none


def parse_epoch_line(line: str) -> dict | None:
    """One epoch line of ``geoddu train`` as an epoch row (see :meth:`Engine.train`)."""
    match = EPOCH_LINE.match(line.strip())
    if match is None:
        return None
    row = {"epoch": int(match["epoch"]), "epochs": int(match["epochs"]),
           **{key: number(match[key]) for key in ("train_loss", "val_loss", "val_miou")}}
    row["best"] = "best" in match["rest"].split()
    return row


def train_args(request: dict) -> list[str]:
    """``geoddu train`` options for a training request (every value as ``--name=VALUE``, so
    that values starting with ``-`` are read as values)."""
    unknown = set(request) - set(TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown training field(s): {', '.join(sorted(unknown))}")
    resume = bool(request.get("resume"))
    args = []
    for key in TRAIN_FIELDS:
        value = request.get(key)
        if value is None or value is False or key in ("run_dir", "resume", "overwrite"):
            continue
        if resume and key in TRAIN_NEW_ONLY:
            continue
        args.append(f"--{key.replace('_', '-')}={value}")
    args.append(f"--output={request['run_dir']}")
    if resume:
        args.append("--resume")
    elif request.get("overwrite"):
        args.append("--overwrite")
    return args
