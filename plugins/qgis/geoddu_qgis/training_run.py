"""A training run as the plugin follows it: the engine's training events (``geoddu.events``:
``start``, ``progress`` for the stages "train" and "validate", ``epoch``) turned into the
algorithm's progress and epoch lines, and what a finished run reached.

Both engines of :mod:`.engine_bridge` feed :class:`TrainEvents` the same events: the command
writes them as JSON lines (``geoddu train --request - --progress json``), geoddu imported
in-process hands them over as dicts (``geoddu.train_model(on_event=...)``). Plain Python (no
QGIS import).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

#: Tags written by the trainer: best.pt (lowest validation loss), last.pt (resumable).
BEST, LAST = "best.pt", "last.pt"
ProgressFn = Callable[[str, int, int], None]
EpochFn = Callable[[dict], None]


class TrainEvents:
    """Call with each training event: ``progress("train", done, total)`` counts batches over
    the whole run (a resumed run starts at the epochs already done), ``epoch(row)`` gets each
    finished epoch, ``start(info)`` where and how the run goes (see
    :meth:`.engine_base.Engine.train`). ``check()`` runs after each start and progress event:
    an exception it raises (the engine's Cancelled) stops the run between batches."""

    def __init__(self, progress: ProgressFn | None = None, epoch: EpochFn | None = None,
                 check: Callable[[], None] | None = None,
                 start: EpochFn | None = None) -> None:
        self.progress, self.epoch, self.check, self.start = progress, epoch, check, start
        self.epochs, self.batches = 0, 1

    def __call__(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            if self.start is not None:
                # A geoddu from before --precision names none: fp16 when amp, else fp32.
                self.start({"device": event.get("device"), "precision": event.get(
                    "precision", "fp16" if event.get("amp") else "fp32")})
            self.epochs = int(event.get("epochs", 0))
            self.batches = max(int(event.get("batches", 1)), 1)
            self._report(int(event.get("start_epoch", 0)) * self.batches)
        elif kind == "progress" and event.get("stage") == "train":
            self._report((int(event.get("epoch", 1)) - 1) * self.batches
                         + int(event.get("done", 0)))
        elif kind == "epoch":
            if self.epoch is not None:
                self.epoch({"epoch": event.get("epoch"),
                            "epochs": event.get("epochs") or self.epochs,
                            "train_loss": number(event.get("train_loss")),
                            "val_loss": number(event.get("val_loss")),
                            "val_miou": number(event.get("val_miou")),
                            "best": bool(event.get("best"))})
            return
        else:
            return
        if self.check is not None:
            self.check()

    def _report(self, done: int) -> None:
        if self.progress is not None:
            self.progress("train", done, self.epochs * self.batches)


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
