"""Keep native libraries' chatter off the user's terminal.

GDAL and libtiff print some errors straight to file descriptor 2 ("_tiffWriteProc: No space
left on device."), beside the one-line error geoddu prints for the same fault. The CLI points
descriptor 2 at an unlinked temporary file and gives Python's ``sys.stderr`` (click, rich,
warnings, tracebacks) a duplicate of the real one: what geoddu says reaches the user, what C
libraries print is kept aside and shown only when a run fails unexpectedly.
``GEODDU_NATIVE_STDERR=1`` leaves descriptor 2 alone (for debugging).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from typing import IO

_log: IO[bytes] | None = None


def capture() -> None:
    """Send descriptor 2 to a private file; ``sys.stderr`` keeps the real stream. Idempotent."""
    global _log
    if _log is not None or os.environ.get("GEODDU_NATIVE_STDERR") == "1":
        return
    try:
        if sys.stderr.fileno() != 2:
            return
    except (AttributeError, OSError, ValueError):
        return  # stderr already captured in-process (click's CliRunner, an IDE): leave it
    try:
        sys.stderr.flush()
        real = os.dup(2)
        log = tempfile.TemporaryFile(prefix="geoddu-native-")
        os.dup2(log.fileno(), 2)
    except OSError:
        return  # no temporary folder (a full disk, say): native messages stay where they were
    sys.stderr = open(  # noqa: SIM115 - lives as long as the process
        real,
        "w",
        buffering=1,
        encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
        errors="backslashreplace",
    )
    _log = log


def captured(limit: int = 4000) -> str:
    """The end of what native libraries printed so far ('' when not capturing)."""
    if _log is None:
        return ""
    try:
        size = _log.seek(0, os.SEEK_END)
        _log.seek(max(0, size - limit))
        return _log.read().decode("utf-8", "replace")
    except OSError:
        return ""


def aside(text: str) -> None:
    """Keep a line for the end of a failed run (see :func:`captured`); dropped when not
    capturing."""
    if _log is None:
        if os.environ.get("GEODDU_NATIVE_STDERR") == "1":
            print(text.rstrip("\n"), file=sys.stderr)
        return
    try:
        _log.write(text.rstrip("\n").encode("utf-8", "replace") + b"\n")
        _log.flush()
    except (OSError, ValueError):
        pass


class _AsideHandler(logging.Handler):
    """Python libraries' log records (tifffile's "invalid data type 61444" for each bad tag,
    several per file) are for developers: kept aside with the native messages, not printed
    before the one `Error:` line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            aside(f"{record.name}: {record.getMessage()}")
        except Exception:  # noqa: BLE001 - logging must never fail a run
            pass


def keep_library_logs_aside() -> None:
    """Idempotent. With a handler on the root logger, logging's last-resort handler (which
    prints WARNING records to stderr when nothing is configured) is never used."""
    root = logging.getLogger()
    if not any(isinstance(h, _AsideHandler) for h in root.handlers):
        root.addHandler(_AsideHandler(logging.WARNING))


def capturing() -> bool:
    return _log is not None
