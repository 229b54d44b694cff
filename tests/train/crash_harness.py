"""Killing `geoddu train` at chosen moments, for tests/train/test_crash_consistency.py and
benchmarks/train_kill.py.

Run as a script, this file is `geoddu` with test hooks put in from the environment (geoddu
itself has none): at the chosen moment the process writes a marker file and waits, and the
parent, polling for the marker, kills it with SIGKILL. A moment is exact that way, inside a
write that lasts a millisecond as well, where a timer would hit it by chance.

GEODDU_CRASH_AT names the moment (N counts from 1 in each process):

    step:N                  after the N-th optimiser step (mid-epoch)
    write:NAME:N:BYTES      inside the N-th write of NAME (last.pt, best.pt, history.json,
                            history.csv): its temporary file holds its first BYTES bytes
    rename:NAME:N           the N-th temporary file of NAME complete, before its rename
    renamed:NAME:N          just after the N-th rename onto NAME (before the next file)

GEODDU_CRASH_ENOSPC=NAME:N:BYTES makes the N-th temporary file of NAME fail like a full disk
(OSError ENOSPC) once BYTES bytes are in it, where no small file system can be mounted.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEMP_MARKER = ".geoddu-tmp-"  # geoddu.io.atomic.TEMP_MARKER (not imported: no geoddu here)
CHECKPOINTS = ("last.pt", "best.pt")
HISTORY = ("history.json", "history.csv")
HERE = Path(__file__).resolve()


# -- the child: geoddu with hooks ---------------------------------------------------------------
class _Hooks:
    def __init__(self, at: str | None, mark: str | None, enospc: str | None) -> None:
        self.mark = mark
        self.at = at.split(":") if at else None
        self.enospc = enospc.split(":") if enospc else None
        self.opened: dict[str, int] = {}
        self.renamed: dict[str, int] = {}
        self.steps = 0

    def pause(self, **detail: Any) -> None:
        """Say where we are, then wait for the SIGKILL."""
        Path(self.mark).write_text(json.dumps({"at": ":".join(self.at), **detail}))
        while True:
            time.sleep(60)

    def install(self) -> None:
        import builtins
        import io

        import torch

        real_open, real_replace, real_step = builtins.open, os.replace, torch.optim.Adam.step

        def opening(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            f = real_open(file, mode, *args, **kwargs)
            name = _target(file)
            if name is None or "w" not in mode:
                return f
            n = self.opened[name] = self.opened.get(name, 0) + 1
            if self.at and self.at[0] == "write" and self.at[1] == name and int(self.at[2]) == n:
                return _Limited(f, int(self.at[3]), lambda: self.pause(bytes=int(self.at[3])))
            if self.enospc and self.enospc[0] == name and int(self.enospc[1]) == n:
                return _Limited(f, int(self.enospc[2]), _disk_full)
            return f

        def replacing(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            name = Path(dst).name
            n = self.renamed.get(name, 0) + 1
            hit = self.at and self.at[0] in ("rename", "renamed") and self.at[1] == name \
                and int(self.at[2]) == n
            if hit and self.at[0] == "rename":
                self.pause()
            real_replace(src, dst, *args, **kwargs)
            self.renamed[name] = n
            if hit:
                self.pause()

        def step(optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            out = real_step(optimizer, *args, **kwargs)
            self.steps += 1
            if self.at and self.at[0] == "step" and int(self.at[1]) == self.steps:
                self.pause()
            return out

        builtins.open = io.open = opening
        os.replace = replacing
        torch.optim.Adam.step = step


def _target(file: Any) -> str | None:
    """The run file a temporary file is written for (.last.pt.geoddu-tmp-PID-X: last.pt)."""
    if not isinstance(file, str | os.PathLike):
        return None
    name = Path(file).name
    for target in CHECKPOINTS + HISTORY:
        if name.startswith(f".{target}{TEMP_MARKER}"):
            return target
    return None


def _disk_full() -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Limited:
    """A file that takes `limit` bytes (or characters), then calls `then` (pause or fail)."""

    def __init__(self, f: Any, limit: int, then: Any) -> None:
        self._f, self._left, self._then = f, limit, then

    def write(self, data: Any) -> int:
        if len(data) < self._left:
            self._left -= len(data)
            return self._f.write(data)
        self._f.write(data[: self._left])
        self._f.flush()
        self._left = 0
        self._then()
        return 0  # not reached

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


# -- the parent: runs, kills, checks -----------------------------------------------------------
@dataclass
class Outcome:
    """One `geoddu train` process: how it ended, its JSON events, where it stopped."""

    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    paused: dict[str, Any] | None = None  # the marker's content when killed at a moment
    killed: bool = False

    @property
    def epoch_in_progress(self) -> int:
        """The epoch the process was in when it stopped, as its events tell: 0 before it
        started training; after the start event or an epoch's end, the next epoch (the step
        that ended it may have run, its progress event not yet sent); the last epoch once the
        run has none left."""
        if not self.events:
            return 0
        last = self.events[-1]
        if last.get("event") == "start":
            return int(last["start_epoch"]) + 1
        if last.get("event") == "epoch":
            return min(int(last["epoch"]) + 1, int(last["epochs"]))
        epochs = [e["epoch"] for e in self.events if isinstance(e.get("epoch"), int)]
        return max(epochs, default=0)


def train_args(data: Path, run: Path, epochs: int, *extra: str, events: bool = True) -> list[str]:
    """The tests' run: the tiny synthetic DDU-Net, a few steps per epoch, bit-reproducible;
    progress as JSON events (`events`) or none (-q: stderr holds only an error). The high
    learning rate makes the validation loss go up as well as down, so that best.pt is not
    always the last epoch's (on the tests' data, epochs 4 and 5 do not improve)."""
    return ["train", "--dataset", "synthetic", "--data", str(data), "-o", str(run), "--depth",
            "2", "--comm-features", "8", "--epochs", str(epochs), "--batch-size", "4",
            "--lr", "1.0", "--deterministic", *(["--progress", "json"] if events else ["-q"]),
            *extra]


def run_geoddu(args: list[str], *, at: str | None = None, kill_after: float | None = None,
               enospc: str | None = None, timeout: float = 120) -> Outcome:
    """`geoddu ARGS` (through the hooks); with `at`, SIGKILLed at that moment, with
    `kill_after`, SIGKILLed that many seconds after its start event (if still running)."""
    env = dict(os.environ)
    mark = None
    if at:
        run_dir = Path(args[args.index("-o") + 1])
        mark = run_dir.parent / f".crash-mark-{os.getpid()}-{time.time_ns()}"
        env.update(GEODDU_CRASH_AT=at, GEODDU_CRASH_MARK=str(mark))
    if enospc:
        env["GEODDU_CRASH_ENOSPC"] = enospc
    proc = subprocess.Popen([sys.executable, str(HERE), *args], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    reader = _Lines(proc)
    start = time.monotonic()
    paused, killed = None, False
    while proc.poll() is None:
        elapsed = time.monotonic() - start
        started = reader.started
        if (mark is not None and mark.exists()) or (
                kill_after is not None and started is not None
                and time.monotonic() - started >= kill_after):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        if elapsed > timeout:
            proc.kill()
            raise TimeoutError(f"geoddu {' '.join(args)} ran past {timeout} s")
        time.sleep(0.002)
    proc.wait()
    if mark is not None and mark.exists():
        paused = json.loads(mark.read_text() or "{}")
        mark.unlink()
    stderr = reader.text()
    events = []
    for line in stderr.splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            pass
    return Outcome(proc.returncode, events, stderr, paused=paused, killed=killed)


class _Lines:
    """stderr read on a thread, so a chatty child never blocks on a full pipe."""

    def __init__(self, proc: subprocess.Popen) -> None:
        import threading

        self.chunks: list[str] = []
        self.started: float | None = None  # when the start event came

        def read() -> None:
            for line in proc.stderr:
                if self.started is None and line.startswith('{"event": "start"'):
                    self.started = time.monotonic()
                self.chunks.append(line)

        self.thread = threading.Thread(target=read, daemon=True)
        self.thread.start()

    def text(self) -> str:
        self.thread.join(timeout=10)
        return "".join(self.chunks)


def temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if TEMP_MARKER in p.name) if run.is_dir() else []


def last_epoch(run: Path) -> int:
    """The epoch last.pt holds (0: no last.pt), read as geoddu reads it."""
    from geoddu.checkpoint import load_checkpoint

    if not (run / "last.pt").is_file():
        return 0
    return int(load_checkpoint(run / "last.pt")["resume"]["epoch"])


def weights(path: Path) -> dict[str, Any]:
    from geoddu.checkpoint import load_checkpoint

    return load_checkpoint(path)["state_dict"]


def same_weights(a: Path, b: Path) -> bool:
    """Bit for bit: every tensor equal, NaNs and signed zeros included."""
    import torch

    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(
        wa[k].dtype == wb[k].dtype and wa[k].shape == wb[k].shape
        and torch.equal(wa[k].view(-1).view(torch.uint8), wb[k].view(-1).view(torch.uint8))
        for k in wa)


def tmpfs_full_disk(data: str, source: str, mount: str, out: str, epochs: int) -> None:
    """Run inside a user and mount namespace over a small tmpfs at `mount`: a copy of the run
    `source` is resumed for one more epoch on a file system left with too little space for
    last.pt, then again once space is freed. What happened goes to the JSON file `out`."""
    import shutil

    run = Path(mount) / "run"
    shutil.copytree(source, run)
    filler = Path(mount) / "filler"
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Room for a few small files, not for a checkpoint (tens of kB).
    os.truncate(filler, max(0, filler.stat().st_size - 16384))
    args = train_args(Path(data), run, epochs, events=False)
    full = run_geoddu(args + ["--resume"])
    report: dict[str, Any] = {"returncode": full.returncode, "stderr": full.stderr,
                              "last_epoch": last_epoch(run), "temporaries": temporaries(run)}
    filler.unlink()
    again = run_geoddu(args + ["--resume"])
    report.update(again_returncode=again.returncode, again_stderr=again.stderr[-2000:],
                  again_last_epoch=last_epoch(run))
    Path(out).write_text(json.dumps(report))


def history_rows(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


if __name__ == "__main__":
    _Hooks(os.environ.get("GEODDU_CRASH_AT"), os.environ.get("GEODDU_CRASH_MARK"),
           os.environ.get("GEODDU_CRASH_ENOSPC")).install()
    from geoddu.cli.main import main

    main()
