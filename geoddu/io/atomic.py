"""Atomic outputs: a temporary file beside the destination, renamed over it only on success.

Temporary names are ``.NAME.geoddu-tmp-PID-RANDOM``: hidden, never mistaken for a result, and
carrying the writer's process id, so that a later run writing the same output can remove what a
process killed with SIGKILL (which cannot clean up) left behind, once that process is gone.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; commits there are unserialised
    fcntl = None  # type: ignore[assignment]

from geoddu.errors import GeodduError

__all__ = [
    "TEMP_MARKER",
    "PAM_SUFFIX",
    "AtomicOutput",
    "check_distinct_paths",
    "fsync_path",
    "commit_all",
    "os_error_line",
    "remove_stale_temporaries",
    "sidecar_of",
    "write_atomically",
]

TEMP_MARKER = ".geoddu-tmp-"

# GDAL's PAM sidecar (category names, raster attribute table...), moved along with its file.
PAM_SUFFIX = ".aux.xml"
# Sidecars GDAL may create next to a dataset; a discarded temp file must not leave them behind.
_SIDECARS = ("", PAM_SUFFIX, ".ovr", ".msk")
_PID = re.compile(r"^(\d+)(?:-|$)")


def os_error_line(exc: OSError, what: str) -> str:
    """One line for an OSError met while writing ``what``; disk full is named as such."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on device writing {what}"
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason} writing {what}"


def sidecar_of(path: str | os.PathLike[str]) -> Path:
    """The PAM sidecar GDAL reads beside ``path`` (``NAME.aux.xml``)."""
    return Path(os.fspath(path) + PAM_SUFFIX)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporary files (and folders) of ``path`` whose writing process is gone."""
    prefix = f".{path.name}{TEMP_MARKER}"
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        match = _PID.match(entry.name[len(prefix) :])
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            pass  # another run got there first, or it is not ours to remove
    return removed


def _same_file(a: Path, b: Path) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_distinct_paths(
    outputs: Mapping[str, str | os.PathLike[str] | None],
    inputs: Mapping[str, str | os.PathLike[str] | None] | None = None,
) -> None:
    """Refuse, before any work, two outputs that are one file, or an output that is an input.

    Keys are what the user called them (``--probabilities``...), so the message can name both.
    """
    outs = [(k, Path(os.fspath(v))) for k, v in outputs.items() if v is not None]
    ins = [(k, Path(os.fspath(v))) for k, v in (inputs or {}).items() if v is not None]
    for i, (name, path) in enumerate(outs):
        for other, other_path in outs[i + 1 :]:
            if _same_file(path, other_path):
                raise GeodduError(
                    f"{name} and {other} are the same file ({path}); give each its own"
                )
        for other, other_path in ins:
            if not str(other_path).startswith("/vsi") and _same_file(path, other_path):
                raise GeodduError(
                    f"{name} {path} is the {other}; writing it would destroy the input"
                )


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``folder`` while one output is renamed into it.

    The check that the destination is free and the renames must be one step: two runs on one
    output that finish together both passed the check, and the later rename replaced the first
    result (the later run exited 0 too). flock serialises them between processes of this host.
    Where a file system refuses flock on a folder (some network ones), the commit goes on
    unlocked, as it did before."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        yield
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                pass
        yield
    finally:
        os.close(fd)  # releases the lock


class AtomicOutput:
    """A destination path plus the temporary file that replaces it only on success.

    Use as a context manager (commit on normal exit, discard on any exception) or call
    :meth:`commit` / :meth:`discard` explicitly. Nothing is created on disk until the caller
    writes :attr:`temp`.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(os.fspath(path))
        self.overwrite = overwrite
        parent = self.path.parent
        if not parent.is_dir():
            raise GeodduError(f"{parent}: output directory does not exist")
        if self.path.is_dir():
            raise GeodduError(f"{self.path}: is a directory")
        if self.path.exists() and not overwrite:
            raise GeodduError(f"{self.path} exists; pass --overwrite to replace it")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise GeodduError(f"{parent}: output directory is not writable")
        remove_stale_temporaries(self.path)
        self._temps: list[Path] = []
        self.temp = self.scratch()
        self.done = False

    def scratch(self) -> Path:
        """Another temporary path beside the destination, removed on commit or discard."""
        while True:
            name = f".{self.path.name}{TEMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}"
            candidate = self.path.with_name(name)
            if not candidate.exists():
                self._temps.append(candidate)
                return candidate

    def _remove_temps(self) -> None:
        for temp in self._temps:
            if temp.is_dir() and not temp.is_symlink():
                shutil.rmtree(temp, ignore_errors=True)
                continue
            for suffix in _SIDECARS:
                Path(str(temp) + suffix).unlink(missing_ok=True)

    def commit(self) -> None:
        """Move :attr:`temp` over the destination and remove every other temporary file."""
        if self.done:
            raise ValueError(f"{self.path}: output already committed or discarded")
        try:
            if not self.temp.is_file():
                raise GeodduError(f"{self.path}: nothing was written")
            with _folder_lock(self.path.parent):
                # The destination may have appeared while we were working (another run).
                if self.path.exists() and not self.overwrite:
                    raise GeodduError(f"{self.path} exists; pass --overwrite to replace it")
                self._replace_with_sidecar()
        except OSError as exc:
            self.discard()
            raise GeodduError(os_error_line(exc, str(self.path))) from exc
        except BaseException:
            self.discard()
            raise
        self.done = True
        self._remove_temps()

    def _replace_with_sidecar(self) -> None:
        """Rename :attr:`temp` over the destination, its GDAL sidecar (``.aux.xml``: category
        names, attribute table) first, so that the output never appears without it.

        A sidecar left by a replaced output (or an orphan one) would describe the new file
        wrongly: it is set aside, and put back if the main rename fails."""
        sidecar = Path(str(self.temp) + PAM_SUFFIX)
        dest_sidecar = sidecar_of(self.path)
        backup = None
        if dest_sidecar.is_file():
            backup = self.scratch()
            os.replace(dest_sidecar, backup)
        moved = False
        try:
            if sidecar.is_file():
                os.replace(sidecar, dest_sidecar)
                moved = True
            os.replace(self.temp, self.path)
        except BaseException:
            if moved:
                dest_sidecar.unlink(missing_ok=True)
            if backup is not None:
                try:
                    os.replace(backup, dest_sidecar)
                except OSError:
                    pass
            raise

    def discard(self) -> None:
        """Delete every temporary file; the destination is left untouched. Idempotent."""
        self.done = True
        self._remove_temps()

    def __enter__(self) -> AtomicOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            if not self.done:
                self.commit()
        else:
            self.discard()


def commit_all(outputs: Iterable[AtomicOutput]) -> None:
    """Commit finished outputs together: if one rename fails, the others are discarded too,
    and those already renamed are removed, so a run leaves all of its outputs or none."""
    outputs = list(outputs)
    done: list[AtomicOutput] = []
    try:
        for out in outputs:
            out.commit()
            done.append(out)
    except BaseException:
        for out in outputs:
            if out not in done:
                out.discard()
        for out in done:
            out.path.unlink(missing_ok=True)
            sidecar_of(out.path).unlink(missing_ok=True)
        raise


def write_atomically(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """``write(temp)``, then rename it over ``path`` (replacing it); on any failure the
    temporary file goes and ``path`` is left as it was. An OSError is one line.

    Durable too: the temporary file is fsynced before the rename and the folder after it.
    Without the first, a power cut can leave the renamed name pointing at data never written
    (an empty file where the old one was); without the second, the old name."""
    out = AtomicOutput(path, overwrite=True)
    try:
        write(out.temp)
        fsync_path(out.temp)
    except OSError as exc:
        out.discard()
        raise GeodduError(os_error_line(exc, str(path))) from exc
    except BaseException:
        out.discard()
        raise
    out.commit()
    try:
        fsync_path(out.path.parent)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself has happened


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder by its path (a folder: its entries, e.g. after a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
