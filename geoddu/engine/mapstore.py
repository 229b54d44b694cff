"""Where the communicated bottleneck maps of a whole scene wait between the two passes.

The store holds F/(stride^2) values per scene pixel: small next to the scene, but still hundreds
of MB for a 16384^2 scene with F=64 at stride 16. Below `max_ram_bytes` it is a dict of arrays;
above, a temporary file read and written with pread/pwrite. A file rather than a memory map, so
that pages never pile up in the process's resident set: RSS stays flat as scenes grow.
"""

from __future__ import annotations

import os
import tempfile
import threading

import numpy as np

from ..errors import GeodduError
from ..io.atomic import os_error_line


class MapStore:
    """Fixed-size float32 records (F, h, w), one per subimage cell, addressed by (row, col)."""

    def __init__(
        self,
        grid: tuple[int, int],
        record_shape: tuple[int, int, int],
        max_ram_bytes: int = 256 * 2**20,
        directory: str | os.PathLike | None = None,
    ) -> None:
        self.grid = grid
        self.record_shape = record_shape
        self.record_bytes = int(np.prod(record_shape)) * 4
        total = self.bytes_for(grid, record_shape)
        self.directory = directory
        self._mem: dict[tuple[int, int], np.ndarray] | None = None
        self._fd: int | None = None
        self._written: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self.on_disk = total > max_ram_bytes
        if not self.on_disk:
            self._mem = {}
        else:
            fd, name = tempfile.mkstemp(prefix="geoddu-maps-", suffix=".f32", dir=directory)
            os.unlink(name)  # anonymous: the space is freed even if the process is killed
            os.ftruncate(fd, total)
            self._fd = fd

    @staticmethod
    def bytes_for(grid: tuple[int, int], record_shape: tuple[int, int, int]) -> int:
        """The store's full size, known before any cell is written."""
        return int(np.prod(record_shape)) * 4 * grid[0] * grid[1]

    def put(self, cell: tuple[int, int], maps: np.ndarray) -> None:
        maps = np.ascontiguousarray(maps, dtype=np.float32).reshape(self.record_shape)
        if self._mem is not None:
            self._mem[cell] = maps
        else:
            try:
                os.pwrite(self._fd, maps.tobytes(), self._offset(cell))
            except OSError as exc:  # the file is sparse: a full disk shows up here
                raise GeodduError(
                    os_error_line(exc, f"the bottleneck store in {self.directory or 'TMPDIR'}")
                    + "; choose another folder with --scratch"
                ) from exc
        with self._lock:
            self._written.add(cell)

    def get(self, cell: tuple[int, int]) -> np.ndarray:
        """The cell's maps; zeros for a cell never written (a skipped, all-nodata subimage)."""
        if cell not in self._written:
            return np.zeros(self.record_shape, np.float32)
        if self._mem is not None:
            return self._mem[cell]
        out = np.empty(self.record_shape, np.float32)
        os.preadv(self._fd, [out], self._offset(cell))
        return out

    def _offset(self, cell: tuple[int, int]) -> int:
        return (cell[0] * self.grid[1] + cell[1]) * self.record_bytes

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._mem = None

    def __enter__(self) -> MapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
