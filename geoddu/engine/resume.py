"""`--resume`: the progress record of one scene's run, and what makes a rerun the SAME job.

A run with ``resume`` keeps, beside its output, a hidden folder ``.NAME.geoddu-resume/``:

* ``progress.json``: the job's fingerprint and the strips (decoded column ranges) whose class
  windows are on disk; rewritten crash-consistently (temporary file, fsync, rename, fsync of
  the folder) after each strip's data is fsynced (:mod:`geoddu.engine.strip_store`);
* ``strip-C0-C1.u8``: each strip's classes, raw (:mod:`geoddu.engine.strip_store`);
* ``lock``: held (flock) while a run uses the folder, so two runs never share it.

The name carries no process id on purpose: :func:`geoddu.io.atomic.remove_stale_temporaries`
removes a dead writer's temporaries, and this folder must outlive a killed run.

A rerun continues only if its fingerprint equals the record's: the checkpoint's content, the
scene (path, size, modification time, header), every option that changes the classes, the
strip layout (which fixes every float operation's shapes, so that the result is byte-identical
to an uninterrupted run), the device kinds and the torch and geoddu versions. Anything else is
refused with one line; nothing is ever resumed silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import GeodduError
from ..io.atomic import fsync_path

__all__ = [
    "RESUME_SUFFIX",
    "ProgressRecord",
    "discard_resume_folder",
    "fingerprint",
    "resume_folder",
]

RESUME_SUFFIX = ".geoddu-resume"
RECORD = "progress.json"
VERSION = 1
_HASH_CHUNK = 1 << 22


def resume_folder(output: str | os.PathLike[str]) -> Path:
    """Where a run of ``output`` with --resume keeps its progress: hidden, beside it."""
    path = Path(os.fspath(output))
    return path.with_name(f".{path.name}{RESUME_SUFFIX}")


def _file_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _model_hash(model: Any) -> str:
    """The checkpoint's content; for an in-memory model (Python API), its weights."""
    if isinstance(model, str):
        return _file_hash(model)
    h = hashlib.sha256()
    for name, tensor in sorted(model.net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _file_identity(path: str | None) -> dict[str, Any] | None:
    """A local file by where it is, its size and its modification time (hashing a 100 GB
    scene would cost more than the run); a GDAL path (/vsicurl/...) by its name."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return {"path": path}
    return {"path": os.path.realpath(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def fingerprint(job: Any, strips: Sequence[tuple[int, int]], devices: Iterable[str]) -> dict:
    """What must not change between a killed run and its resumption, by part (the part named
    in the refusal). ``job`` is an open :class:`geoddu.engine.job.Job`."""
    import torch

    from ..version import __version__

    request, plan, source = job.request, job.plan, job.source
    return {
        "model": {"content": _model_hash(request.model), "precision": request.precision},
        "input": {
            # A mosaic's VRT is rebuilt in a new folder by every run: its inputs are the
            # scene (its header below holds the grid a --target-crs/--resolution made).
            "file": ([_file_identity(p) for p in request.mosaic_of]
                     if request.mosaic_of else _file_identity(request.src)),
            "header": [source.width, source.height, str(source.dtype), str(source.crs),
                       list(source.transform)[:6]],
        },
        "options": {
            "bands": list(source.bands),
            "subimage_size": plan.cells.partition.row_sizes[0],
            "aoi": [_file_identity(request.aoi), request.aoi_layer, request.aoi_where],
        },
        "strips": [list(s) for s in strips],
        "devices": sorted({d.split(":")[0] for d in devices}),
        "software": {"geoddu": __version__, "torch": torch.__version__},
    }


_WHAT = {
    "model": "model (checkpoint content or precision)",
    "input": "input scene",
    "options": "options (bands, subimage size or area of interest)",
    "strips": "strip layout (devices, --gpus or strip width)",
    "devices": "device kind",
    "software": "geoddu or torch version",
}


class ProgressRecord:
    """The folder of one --resume run, locked while open: its fingerprint and done strips."""

    def __init__(self, output: str | os.PathLike[str], print_: dict) -> None:
        self.folder = resume_folder(output)
        self.output = Path(os.fspath(output))
        # As it reads back from JSON (lists, plain numbers), so that the comparison is exact.
        self.fingerprint = json.loads(json.dumps(print_, default=int))
        self.done: list[tuple[int, int]] = []
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, output: str | os.PathLike[str], print_: dict) -> ProgressRecord:
        """The record of this job: continued if the folder holds the same job's, started
        afresh if there is none; a different job's is refused."""
        rec = cls(output, print_)
        try:
            rec.folder.mkdir(exist_ok=True)
        except OSError as exc:
            raise GeodduError(f"{rec.folder}: cannot keep --resume progress: "
                              f"{exc.strerror or exc}") from exc
        rec._lock()
        try:
            rec._load()
        except BaseException:
            rec.close()
            raise
        return rec

    def _lock(self) -> None:
        import fcntl  # POSIX, as the rest of the engine's scratch files (pread/pwrite)

        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise GeodduError(f"another run is using {self.folder} (the --resume progress of "
                              f"{self.output}); wait for it to end") from None
        self._lock_fd = fd

    def _load(self) -> None:
        path = self.folder / RECORD
        if not path.exists():
            # Killed before the first record, or a first run: nothing done can be in here.
            self._clear_data()
            self.write()
            return
        try:
            data = json.loads(path.read_text())
            kept, done = data["fingerprint"], [tuple(d) for d in data["done"]]
            if data.get("version") != VERSION:
                raise ValueError("version")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise GeodduError(f"{path}: unreadable --resume progress ({type(exc).__name__}); "
                              f"delete {self.folder} or run without --resume") from exc
        changed = [k for k in self.fingerprint if kept.get(k) != self.fingerprint[k]]
        if changed:
            raise GeodduError(
                f"{self.output}: the kept --resume progress is of another job (its "
                f"{_WHAT.get(changed[0], changed[0])} differs); delete {self.folder} or run "
                f"without --resume")
        self.done = done

    def _clear_data(self) -> None:
        for entry in self.folder.iterdir():
            if entry.name != "lock":
                entry.unlink(missing_ok=True)

    def write(self) -> None:
        """Replace the record crash-consistently: a reader finds the old one or the new one."""
        tmp = self.folder / (RECORD + ".tmp")
        data = {"version": VERSION, "fingerprint": self.fingerprint,
                "done": [list(d) for d in self.done]}
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / RECORD)
            # Persists the rename, and the names of the strip files created since the last
            # record: their data was fsynced, but a name lives in the folder.
            fsync_path(self.folder)
        except OSError as exc:
            raise GeodduError(f"{self.folder}: cannot write --resume progress: "
                              f"{exc.strerror or exc}") from exc

    def strip_done(self, cols: tuple[int, int]) -> None:
        """Record a strip whose class windows are already on disk (fsynced)."""
        self.done.append(tuple(cols))
        self.write()

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def remove(self) -> None:
        """The run is committed: its progress has nothing left to say."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def discard_resume_folder(output: str | os.PathLike[str]) -> None:
    """After a plain run committed ``output``: a --resume folder left by a killed run of it
    describes an output that is now replaced, so it goes (unless a run is using it)."""
    folder = resume_folder(output)
    if not folder.is_dir():
        return
    with contextlib.suppress(OSError), _locked(folder):
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    import fcntl

    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: in use, left alone
        yield
    finally:
        os.close(fd)
