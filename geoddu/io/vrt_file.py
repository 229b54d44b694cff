"""Where a VRT that geoddu writes for one run lives (--band-files, --resample): in GDAL's memory,
or in the private temporary folder of the output it serves."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from geoddu.errors import GeodduError

from .atomic import AtomicOutput, os_error_line

__all__ = ["vrt_file"]


@contextmanager
def vrt_file(text: str, name: str, beside: str | os.PathLike[str] | None) -> Iterator[str]:
    """A path GDAL opens holding `text`, for as long as the block runs.

    ``beside``: an output path; the file is ``.NAME.geoddu-tmp-PID-RANDOM/<name>``
    (:class:`geoddu.io.atomic.AtomicOutput`'s private folder, never committed), removed when
    the block ends however it ends, and by a later run if this process is killed; every
    process and thread can open it. None: ``/vsimem/`` (this process only; nothing written),
    for a plan or a rank that writes no output.
    """
    if beside is None:
        from rasterio.io import MemoryFile

        stem, dot, ext = name.rpartition(".")
        unique = f"geoddu-{stem}-{secrets.token_hex(4)}{dot}{ext}"
        with MemoryFile(text.encode("utf-8"), filename=unique) as memory:
            yield memory.name
        return
    area = AtomicOutput(beside, overwrite=True)  # its private temporary names only
    path = area.temp / name
    try:
        try:
            area.temp.mkdir()
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise GeodduError(os_error_line(exc, str(path))) from exc
        yield str(path)
    finally:
        area.discard()
