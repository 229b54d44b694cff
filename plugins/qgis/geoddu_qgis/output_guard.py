"""A failed or cancelled run leaves nothing: the state of its output paths before it ran.

Plain Python (standard library only, no QGIS import), shared by every engine of
:mod:`.engine_bridge`: what a run created or changed at its outputs, and the engine's temporary
files (``.NAME.geoddu-tmp-*``) that appeared beside them, can be removed again.
"""

from __future__ import annotations

import os
import shutil


class OutputGuard:
    """The state of a run's output paths before it, so that a failed run can leave nothing.

    :meth:`discard` removes every output path (and GDAL/SQLite side-car) that the run created
    or changed, and the engine's temporary files (``.NAME.geoddu-tmp-*``) beside them that
    appeared during the run: those of a subprocess that was killed, or that crashed, and could
    not remove its own. Files that were there before the run and that it did not touch stay.
    """

    SIDECARS = ("", ".aux.xml", ".ovr", ".msk", "-journal", "-wal", "-shm")

    def __init__(self, outputs):
        self.paths = [os.path.abspath(path) for path in outputs if path]
        self.before = {path + suffix: file_state(path + suffix)
                       for path in self.paths for suffix in self.SIDECARS}
        self.temps_before = {path: set(engine_temporaries(path)) for path in self.paths}

    def discard(self) -> None:
        for path, state in self.before.items():
            _remove_if_new(path, state)
        for path in self.paths:
            for entry in engine_temporaries(path):
                if entry not in self.temps_before[path]:
                    _remove_path(entry)

    def written(self, path: str) -> bool:
        """Whether the run wrote ``path`` (a file that is new, or changed since the guard)."""
        return os.path.isfile(path) and file_state(path) != self.before.get(
            os.path.abspath(path))


def file_state(path: str):
    """``(size, mtime)`` of ``path``, or None when there is nothing there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def engine_temporaries(path: str) -> list[str]:
    """The engine's temporary files (and folders) for output ``path``:
    ``.NAME.geoddu-tmp-*`` beside it."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.geoddu-tmp-"
    return [os.path.join(folder, entry) for entry in listdir(folder)
            if entry.startswith(prefix)]


def listdir(path: str) -> list[str]:
    """The names in folder ``path``; none when it cannot be read."""
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove_if_new(path: str, before) -> None:
    """Remove ``path`` if the run created or changed it (a failed run leaves no output)."""
    if file_state(path) is not None and file_state(path) != before:
        _remove_path(path)


def _remove_path(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    except OSError:
        pass
