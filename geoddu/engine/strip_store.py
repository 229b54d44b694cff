"""The raw scratch raster of a --resume run: each strip's class windows in a file of its own,
and the final GeoTIFF written from them in one fixed order.

GDAL lays a GeoTIFF's blocks out in the order they are written, so windows written as threads
finish them would give a resumed run other bytes than an uninterrupted one. Here the compute
threads only put windows into raw files (``strip-C0-C1.u8``: the strip's pixel columns, every
row of the scene; a strip is one device's, so no two threads share a file), and once every
strip is done the output is written tile by tile, row-major, through the usual writer.

Bytes are stored inverted (class ``k`` as ``255 - k``): a file is created sparse, all zeros, and
a window no run wrote (outside an area of interest) then reads back as nodata (255).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ..errors import GeodduError
from ..io.writer import TILE
from ..partition import Partition, Subimage

__all__ = ["StripStore"]

Cols = tuple[int, int]


class StripStore:
    """The sink of a --resume run (windows go to the strip files, synchronously, so a strip's
    windows are all in its file when the strip ends), and the source of its final write."""

    wants_probabilities = False

    def __init__(self, folder: Path, partition: Partition, height: int, width: int,
                 strips: Sequence[Cols]) -> None:
        self.folder, self.height, self.width = folder, height, width
        offsets = partition.col_offsets
        # Each strip's pixel columns [x0, x1), clipped to the scene (the last cell is padded).
        self.spans = {
            tuple(c): (offsets[c[0]], min(width, offsets[c[1] - 1] + partition.col_sizes[c[1] - 1]))
            for c in strips
        }
        self.of_col = {j: c for c in self.spans for j in range(c[0], c[1])}
        self._fds: dict[Cols, int] = {}
        self._lock = threading.Lock()

    def path(self, cols: Cols) -> Path:
        return self.folder / f"strip-{cols[0]}-{cols[1]}.u8"

    def check_space(self, todo: Sequence[Cols]) -> None:
        """Refuse before any work when the strips still to run would not fit the disk."""
        need = sum(self.height * (self.spans[c][1] - self.spans[c][0]) for c in todo)
        free = shutil.disk_usage(self.folder).free
        if need > free:
            raise GeodduError(
                f"{self.folder}: --resume keeps {need / 2**20:.0f} MB of class windows beside "
                f"the output, {free / 2**20:.0f} MB free; free space or run without --resume")

    def _fd(self, cols: Cols) -> int:
        """The strip's file, created afresh the first time this process writes it: a strip
        not recorded as done may hold a killed run's partial windows."""
        with self._lock:
            fd = self._fds.get(cols)
            if fd is None:
                x0, x1 = self.spans[cols]
                fd = os.open(self.path(cols), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
                os.ftruncate(fd, self.height * (x1 - x0))
                self._fds[cols] = fd
            return fd

    def put(self, cell: Subimage, classes: np.ndarray, probs: np.ndarray | None) -> None:
        cols = self.of_col[cell.col]
        fd = self._fd(cols)
        x0, x1 = self.spans[cols]
        stride = x1 - x0
        data = np.invert(np.ascontiguousarray(classes, np.uint8))
        start = cell.row_off * stride + cell.col_off - x0
        try:
            for r in range(data.shape[0]):
                os.pwrite(fd, data[r].tobytes(), start + r * stride)
        except OSError as exc:
            raise GeodduError(f"{self.folder}: cannot keep class windows: "
                              f"{exc.strerror or exc}") from exc

    def finish_strip(self, cols: Cols) -> None:
        """The strip's windows are on disk (fsynced) once this returns: only then may the
        progress record say it is done."""
        fd = self._fd(tuple(cols))
        try:
            os.fsync(fd)
        except OSError as exc:
            raise GeodduError(f"{self.folder}: cannot keep class windows: "
                              f"{exc.strerror or exc}") from exc
        with self._lock:
            os.close(self._fds.pop(tuple(cols)))

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def _rows(self, cols: Cols, r0: int, h: int) -> np.ndarray:
        x0, x1 = self.spans[cols]
        n = h * (x1 - x0)
        with open(self.path(cols), "rb") as f:
            raw = os.pread(f.fileno(), n, r0 * (x1 - x0))
        if len(raw) != n:
            raise GeodduError(f"{self.path(cols)}: class windows cut short; delete "
                              f"{self.folder} and run again")
        return np.invert(np.frombuffer(raw, np.uint8).reshape(h, x1 - x0))

    def write_into(self, write: Callable[[np.ndarray, int, int], None],
                   check: Callable[[], None] = lambda: None) -> None:
        """Every output tile, row-major, assembled from the strips it overlaps: the same order
        whatever strips a run did itself. Holds one band of rows of at most two strips."""
        order = sorted(self.spans, key=lambda c: self.spans[c][0])
        for r0 in range(0, self.height, TILE):
            h = min(TILE, self.height - r0)
            rows: dict[Cols, np.ndarray] = {}
            for t0 in range(0, self.width, TILE):
                t1 = min(self.width, t0 + TILE)
                window = np.full((h, t1 - t0), 255, np.uint8)  # columns no strip decodes
                for cols in order:
                    x0, x1 = self.spans[cols]
                    if x1 <= t0 or x0 >= t1:
                        continue
                    if cols not in rows:
                        rows[cols] = self._rows(cols, r0, h)
                    a, b = max(x0, t0), min(x1, t1)
                    window[:, a - t0 : b - t0] = rows[cols][:, a - x0 : b - x0]
                for cols in [c for c in rows if self.spans[c][1] <= t1]:
                    del rows[cols]
                write(window, r0, t0)
            check()
