"""The run folder, and how a resume makes it whole after a kill at any moment.

After each epoch the loop writes, in this order: `last.pt`, `best.pt` (on a better validation
loss), `history.json`, `history.csv`; after the last epoch `best.pt`'s card gets the test
split's figures. Each file is replaced atomically (temporary file, fsync, rename, fsync of the
folder: geoddu.io.atomic.write_atomically), so a SIGKILL, a full disk or a power cut leaves each
file either old or new and whole, plus perhaps a temporary file. `last.pt` is written first
because it is the run's one source of truth: whatever lags behind it is rebuilt from it here.

- A temporary file of a writer that is gone: removed.
- `best.pt` older than the epoch `last.pt` names as the best (killed between the two writes):
  that epoch is `last.pt`'s own, and `best.pt` is `last.pt` without the resume state.
- History files a row short of `last.pt` (killed before they were written) or, from a run of an
  older geoddu that wrote them last, a row ahead: rewritten from `last.pt`'s history.
- A finished run whose `best.pt` card still waits for the test figures (killed before they were
  added): the resumed run evaluates them, although no epoch is left to train.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from ..checkpoint import load_checkpoint, write_checkpoint
from ..errors import GeodduError
from ..io.atomic import remove_stale_temporaries, write_atomically

LAST, BEST = "last.pt", "best.pt"
HISTORY_JSON, HISTORY_CSV = "history.json", "history.csv"
RUN_FILES = (LAST, BEST, HISTORY_JSON, HISTORY_CSV)


def has_last(run_dir: str | os.PathLike) -> bool:
    """Whether the folder holds a run to resume (a kill in the first epoch leaves none)."""
    return (Path(run_dir) / LAST).is_file()


def check_run_dir(run_dir: str | os.PathLike, *, resume: bool, overwrite: bool) -> Path:
    """A new run refuses to clobber an old one unless told to."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / LAST).is_file():
            # A run killed in its first epoch left none: its whole command line with --resume
            # starts it again (geoddu.train.api).
            raise GeodduError(f"{run_dir / LAST}: nothing to resume; give the run's --dataset "
                              f"and --data with --resume to start it")
        return run_dir
    if (run_dir / LAST).exists() or (run_dir / BEST).exists():
        if not overwrite:
            raise GeodduError(f"{run_dir} already holds a run; pass --resume to continue it or "
                              f"--overwrite to start again")
        for name in (LAST, BEST, "history.csv", "history.json"):
            (run_dir / name).unlink(missing_ok=True)
    if run_dir.exists() and not run_dir.is_dir():
        raise GeodduError(f"{run_dir}: not a directory")
    if run_dir.is_dir():  # a run killed in its first epoch, started again
        remove_dead_temporaries(run_dir)
    return run_dir


def remove_dead_temporaries(run_dir: Path) -> None:
    """The temporary files a killed writer left of the run's files (a live one's stay)."""
    for name in RUN_FILES:
        remove_stale_temporaries(run_dir / name)


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """history.json, then history.csv: the rows of the epochs `last.pt` holds."""
    _write_text(run_dir / HISTORY_JSON, json.dumps(history, indent=1) + "\n")
    buf = io.StringIO()
    fields = list(history[0]) if history else []
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    _write_text(run_dir / HISTORY_CSV, buf.getvalue())


def reconcile(run_dir: str | os.PathLike, last: dict[str, Any]) -> bool:
    """Bring the run folder in line with `last` (its `last.pt`, read); True when `best.pt`'s
    test figures are still to be evaluated. Rank 0 alone calls this (it alone writes)."""
    run_dir = Path(run_dir)
    remove_dead_temporaries(run_dir)
    state = last["resume"]
    epoch, best_epoch = int(state["epoch"]), int(state["best_epoch"])
    best = _read_best(run_dir / BEST)
    if best_epoch == epoch > 0 and _epoch_of(best) != epoch:
        best = {k: v for k, v in last.items() if k != "resume"}
        write_checkpoint(run_dir / BEST, best)
    write_history(run_dir, [dict(r) for r in state["history"]])
    test = ((best or {}).get("card") or {}).get("test")
    return isinstance(test, dict) and not test.get("evaluated", True)


def _read_best(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return load_checkpoint(path)
    except GeodduError:
        # Never left so by a kill (renames are atomic); a power cut on a file system that
        # lost the data of a renamed file could. last.pt repairs it when it holds the best
        # epoch; otherwise the next better epoch replaces it.
        return None


def _epoch_of(ckpt: dict[str, Any] | None) -> int | None:
    if ckpt is None:
        return None
    value = (ckpt.get("training") or {}).get("epochs_run")
    return int(value) if isinstance(value, int) else None


def _write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda tmp: tmp.write_text(text))
