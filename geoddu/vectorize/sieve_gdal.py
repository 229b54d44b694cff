"""``--min-area`` with GDAL's sieve (``GDALSieveFilter``, through ``rasterio.features.sieve``):
the default.

GDAL's sieve reads its source line by line, three times, and keeps roughly 24 bytes per
polygon (GDAL's documentation), never the map; its output is written line by line too.
rasterio hands it bands of an open dataset as they are, but wraps an ndarray ``out`` (and an
ndarray ``mask``, after a copy) in a MEM dataset. So:

* **Stage**: the class map is read window by window (:class:`ClassReader`: checked ids, nodata
  and 255 as :data:`NONE`) into a raw ``uint8`` file in the output's private folder, class ``c``
  stored as ``c + 1`` and "no polygon" as 0. With an ENVI header GDAL opens it as a band, which
  is both the source and the mask (non-zero = valid): no copy of a mask in memory, and GDAL
  sees exactly the classes geoddu polygonises, whatever the input's type, nodata or mask.
* **Sieve**: GDAL writes into a second raw file, memory-mapped as the ndarray ``out``: its
  pages are file-backed, written out and dropped by the kernel when memory is short.
* **Read back** (:class:`SievedMap`): the polygonising pass reads its windows from the sieved
  file and counts the pixels that changed.

Both files take one byte per pixel of disk beside the output, and go with the private folder.
"""

from __future__ import annotations

import mmap
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from rasterio.errors import NotGeoreferencedWarning

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.atomic import os_error_line
from geoddu.io.gdal_errors import gdal_checked
from geoddu.vectorize.class_windows import NONE, CancelFn, ClassReader, ProgressFn
from geoddu.vectorize.memory_plan import region_starts

Window = tuple[int, int, int, int]


class ScratchBand:
    """One ``uint8`` band as a raw, memory-mapped file with an ENVI header, so that numpy and
    GDAL both address it."""

    def __init__(self, path: Path, height: int, width: int, what: str) -> None:
        """``what``: the output the file is scratch for, as the user named it (for errors)."""
        self.path, self.height, self.width = path, height, width
        size = height * width
        try:
            with open(path, "w+b") as f:
                # Reserve the blocks now: a write into a mapped page the disk has no room for
                # kills the process (SIGBUS) instead of raising.
                if hasattr(os, "posix_fallocate"):
                    os.posix_fallocate(f.fileno(), 0, size)
                else:
                    f.truncate(size)
                self._map = mmap.mmap(f.fileno(), size)
            path.with_suffix(".hdr").write_text(
                f"ENVI\nsamples = {width}\nlines = {height}\nbands = 1\nheader offset = 0\n"
                "file type = ENVI Standard\ndata type = 1\ninterleave = bsq\nbyte order = 0\n"
            )
        except OSError as exc:
            raise GeodduError(os_error_line(exc, f"{what} (the sieve's scratch copy)")) from exc
        self.array = np.frombuffer(self._map, np.uint8).reshape(height, width)

    def release(self, rows: int) -> None:
        """Unmap the pages of the first ``rows`` rows (written or read, not needed again): the
        data stays in the file, and resident memory does not grow with the map."""
        end = min(rows, self.height) * self.width // mmap.PAGESIZE * mmap.PAGESIZE
        if end and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, 0, end)

    def open(self) -> rasterio.DatasetReader:
        self._map.flush()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(self.path, driver="ENVI")

    def close(self) -> None:
        """Unmap and delete the file (the private folder goes later; this frees the disk now)."""
        self.array = np.empty((0, 0), np.uint8)
        try:
            self._map.close()
        except BufferError:
            pass  # a view is still alive (a traceback's frame): unmapped when it goes
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".hdr").unlink(missing_ok=True)


class SievedMap:
    """The sieved class map, window by window, as :class:`ClassReader` gives the original."""

    def __init__(self, staged: ScratchBand, sieved: ScratchBand) -> None:
        self.staged, self.sieved = staged, sieved
        self.changed = 0  # pixels whose class the sieve changed, in the windows read so far
        self._row = 0

    def read(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        before = self.staged.array[r0 : r0 + h, c0 : c0 + w]
        after = self.sieved.array[r0 : r0 + h, c0 : c0 + w]
        self.changed += int(np.count_nonzero(before != after))
        self._row = r0
        # Staged values are class + 1 (mod 256), so - 1 turns 0 back into NONE (255).
        return after - np.uint8(1)

    def next_row(self) -> None:
        for band in (self.staged, self.sieved):
            band.release(self._row)

    def close(self) -> None:
        for band in (self.staged, self.sieved):
            band.close()


def gdal_sieve(
    reader: ClassReader,
    windows: list[Window],
    threshold: int,
    folder: Path,
    dst: Path,
    progress: ProgressFn,
    cancel: CancelFn | None,
    fits: Callable[[int], None] | None = None,
) -> SievedMap:
    """Stage the class map into ``folder``, sieve it with GDAL (4-connectivity, regions below
    ``threshold`` pixels), and return the sieved map to polygonise. ``fits(regions)``, if
    given, is told an upper bound of the map's regions before GDAL runs (and may refuse)."""
    height, width = reader.source.height, reader.source.width
    staged = ScratchBand(folder / "classes.raw", height, width, str(dst))
    sieved: ScratchBand | None = None
    try:
        last_row = windows[0][0]
        regions = 0
        for index, (r0, c0, h, w) in enumerate(windows):
            if cancel is not None and cancel():
                raise Cancelled("vectorize cancelled; nothing was written")
            if r0 != last_row:
                reader.next_row()
                staged.release(r0)
                last_row = r0
            cls = reader.read(r0, c0, h, w)
            if fits is not None:
                regions += region_starts(cls, NONE)
            # NONE (255) + 1 wraps to 0 in uint8: "no polygon" is GDAL's mask value 0.
            staged.array[r0 : r0 + h, c0 : c0 + w] = cls + np.uint8(1)
            if index + 1 < len(windows):  # the last step is reported when GDAL is done
                progress("sieve", index + 1, len(windows))
        reader.close()
        staged.release(height)
        if fits is not None:
            fits(regions)
        sieved = ScratchBand(folder / "sieved.raw", height, width, str(dst))
        # rasterio ignores GDALSieveFilter's return value; GDAL's errors are caught here.
        with gdal_checked(dst, sieved.path), staged.open() as ds:
            band = rasterio.band(ds, 1)
            rasterio.features.sieve(band, threshold, out=sieved.array, mask=band, connectivity=4)
        sieved.release(height)
        if cancel is not None and cancel():
            raise Cancelled("vectorize cancelled; nothing was written")
        progress("sieve", len(windows), len(windows))
        return SievedMap(staged, sieved)
    except BaseException:
        staged.close()
        if sieved is not None:
            sieved.close()
        raise
