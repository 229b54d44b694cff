"""GDAL's errors while writing, caught where rasterio would let them pass.

GDAL reports many write errors only when a dataset is flushed or closed, and rasterio's
``close()`` does not raise for them: a GeoTIFF whose last tiles never reached a full disk closes
"successfully". Inside :func:`gdal_checked` every error GDAL signals on this thread is
collected (rasterio routes them to its loggers inside an ``Env``), and the block
fails with one line if there was any. :func:`verify_readable` then reads the finished file back
in full, because the last word on whether an output is whole is reading it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import rasterio
from rasterio._err import CPLE_BaseError
from rasterio.errors import RasterioError

from geoddu.errors import GeodduError

from .atomic import os_error_line

__all__ = ["disk_full", "gdal_checked", "verify_readable", "write_error_line"]

_LOGGER = logging.getLogger("rasterio")
# rasterio logs GDAL's errors at INFO (from rasterio._env or rasterio._err, depending on where
# its handler sits); below the default WARNING those records would never be made.
for _name in ("rasterio._env", "rasterio._err"):
    _logger = logging.getLogger(_name)
    if _logger.level == logging.NOTSET or _logger.level > logging.INFO:
        _logger.setLevel(logging.INFO)
_MSG = re.compile(r"msg='(.*)'$", re.S)
# After a failed write, less than this left on the output's file system means the disk filled
# up: GDAL's own message ("Write error at scanline 0") does not say so.
_FULL_BYTES = 16 * 2**20


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        # Readers on other threads log here too; their errors are theirs to report.
        if record.thread != self.thread:
            return
        text = record.getMessage()
        if "error" not in text.lower():
            return
        match = _MSG.search(text)
        self.messages.append(match.group(1) if match else text)


def disk_full(path: Path) -> bool:
    """Whether the file system of ``path`` has (next to) nothing left, after a failed write."""
    try:
        return shutil.disk_usage(path.parent).free < _FULL_BYTES
    except OSError:
        return False


def write_error_line(path: str | os.PathLike[str], exc: BaseException | None, gdal: list[str],
                     temp: str | os.PathLike[str] | None = None) -> str:
    """One line for a failed write of ``path`` (the user's name, not the temporary file's)."""
    target = Path(os.fspath(temp if temp is not None else path))
    if isinstance(exc, OSError) and exc.errno is not None and not isinstance(exc, RasterioError):
        return os_error_line(exc, str(path))
    if disk_full(target):
        return f"no space left on device writing {path}"
    reason = gdal[0] if gdal else (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return f"writing {path} failed: {reason}"


@contextmanager
def gdal_checked(path: str | os.PathLike[str],
                 temp: str | os.PathLike[str] | None = None) -> Iterator[list[str]]:
    """Run a block of GDAL writes; any error GDAL signals in it is one GeodduError."""
    collector = _Collector()
    _LOGGER.addHandler(collector)
    try:
        with rasterio.Env():
            yield collector.messages
    except GeodduError:
        raise
    except (RasterioError, CPLE_BaseError, OSError) as exc:
        raise GeodduError(write_error_line(path, exc, collector.messages, temp)) from exc
    finally:
        _LOGGER.removeHandler(collector)
    if collector.messages:
        raise GeodduError(write_error_line(path, None, collector.messages, temp))


def verify_readable(temp: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """Read every block of every band of the written file; fail if any does not decode."""
    with gdal_checked(path, temp), rasterio.open(temp) as ds:
        for _, window in ds.block_windows(1):
            ds.read(window=window)
