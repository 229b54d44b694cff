"""Windowed, boundless reading of any raster, without ever loading the whole image.

`RasterSource` reads windows through one of two backends (`geoddu.io.raster_backends`: GDAL
through rasterio for everything GDAL opens, tifffile for plain TIFF / OME-TIFF without
georeferencing) and applies GDAL's band and mask rules. Every window read is boundless: the
parts of the window outside the image are zeros and invalid in the mask.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from affine import Affine

from geoddu.errors import GeodduError

from .raster_backends import RasterioBackend, check_block_size, open_backend

__all__ = ["RasterSource", "open_raster"]


class RasterSource:
    """One open handle on a raster, read window by window.

    Handles are not thread-safe (GDAL's are not): give every thread or process its own via
    :meth:`reopen`. Pickling a source reopens the file on the other side, which is what
    DataLoader worker processes need.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        bands: Sequence[int] | None = None,
        *,
        _kind: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self._backend = open_backend(self.path, _kind)
        self._closed = False
        total = self._backend.total_bands
        if bands is None:
            chosen = tuple(range(1, total + 1))
        else:
            chosen = tuple(int(b) for b in bands)
            if not chosen:
                self._backend.close()
                raise GeodduError(f"{self.path}: no bands selected")
            for b in chosen:
                if not 1 <= b <= total:
                    self._backend.close()
                    raise GeodduError(
                        f"{self.path}: band {b} does not exist; the raster has {total} "
                        f"band{'s' if total != 1 else ''} (numbered from 1)"
                    )
        self.bands: tuple[int, ...] = chosen
        self._check_blocks()

    def _check_blocks(self) -> None:
        if self._backend.name == "tifffile-memmap":
            return  # uncompressed and mapped: a window touches only its own bytes
        rows, cols = self._backend.block_shape(self.bands)
        try:
            check_block_size(self.path, rows, cols,
                             self._backend.dtype(self.bands).itemsize * len(self.bands))
        except GeodduError:
            self._backend.close()
            raise

    # --- description -------------------------------------------------------------------------

    @property
    def backend(self) -> str:
        """How the pixels are read: "rasterio", "tifffile-memmap" or "tifffile-segments"."""
        return self._backend.name

    @property
    def width(self) -> int:
        return self._backend.width

    @property
    def height(self) -> int:
        return self._backend.height

    @property
    def count(self) -> int:
        """Number of selected bands, i.e. the first axis of what :meth:`read` returns."""
        return len(self.bands)

    @property
    def total_bands(self) -> int:
        """Number of bands in the file, selected or not."""
        return self._backend.total_bands

    @property
    def alpha_bands(self) -> tuple[int, ...]:
        """Bands (1-based, of the file) GDAL reads as alpha: part of the mask, not data."""
        return self._backend.alpha_bands

    @property
    def band_names(self) -> tuple[str | None, ...]:
        """Per band of the file: its description, else its colour interpretation, else None."""
        return self._backend.band_names

    @property
    def dtype(self) -> np.dtype:
        return self._backend.dtype(self.bands)

    @property
    def crs(self) -> rasterio.crs.CRS | None:
        return self._backend.crs if isinstance(self._backend, RasterioBackend) else None

    @property
    def transform(self) -> Affine:
        if isinstance(self._backend, RasterioBackend):
            return self._backend.transform
        return Affine.identity()

    @property
    def nodata(self) -> float | None:
        return self._backend.nodata if isinstance(self._backend, RasterioBackend) else None

    @property
    def block_shape(self) -> tuple[int, int]:
        """(rows, cols) of the file's internal tiles or strips, for aligning windows."""
        return self._backend.block_shape(self.bands)

    @property
    def profile(self) -> dict[str, Any]:
        """What an output aligned with this raster needs; keys match the writers' arguments."""
        return {
            "width": self.width,
            "height": self.height,
            "crs": self.crs,
            "transform": self.transform,
        }

    # --- reading -----------------------------------------------------------------------------

    def _inside(
        self, row_off: int, col_off: int, height: int, width: int
    ) -> tuple[int, int, int, int] | None:
        if height < 0 or width < 0:
            raise ValueError(f"negative window size {height}x{width}")
        if self._closed:
            raise ValueError(f"{self.path}: read from a closed RasterSource")
        r0, r1 = max(row_off, 0), min(row_off + height, self.height)
        c0, c1 = max(col_off, 0), min(col_off + width, self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        return r0, r1, c0, c1

    def _read(
        self, row_off: int, col_off: int, height: int, width: int, *, data: bool, mask: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        row_off, col_off = int(row_off), int(col_off)
        height, width = int(height), int(width)
        inside = self._inside(row_off, col_off, height, width)
        floating = self.dtype.kind in "fc"
        # NaN is never a usable input, so float rasters also need the data to build the mask.
        need_data = data or (mask and floating)
        if inside == (row_off, row_off + height, col_off, col_off + width):
            # The whole window is inside: the backend's arrays as they come, no padded copy.
            args = (self.bands, row_off, col_off, height, width)
            out = self._backend.read(*args) if need_data else None
            valid = self._backend.read_valid(*args) if mask else None
            if valid is not None and floating:
                valid = valid & ~np.isnan(out).any(axis=0)
            return (out if data else None), valid
        out = np.zeros((self.count, height, width), dtype=self.dtype) if need_data else None
        valid = np.zeros((height, width), dtype=bool) if mask else None
        if inside is None:
            return out, valid
        r0, r1, c0, c1 = inside
        dst = (slice(r0 - row_off, r1 - row_off), slice(c0 - col_off, c1 - col_off))
        args = (self.bands, r0, c0, r1 - r0, c1 - c0)
        if out is not None:
            out[(slice(None), *dst)] = self._backend.read(*args)
        if valid is not None:
            part = self._backend.read_valid(*args)
            if floating:
                part &= ~np.isnan(out[(slice(None), *dst)]).any(axis=0)
            valid[dst] = part
        return (out if data else None), valid

    def read(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """Pixels of a window as (count, height, width); outside the image they are 0."""
        out, _ = self._read(row_off, col_off, height, width, data=True, mask=False)
        assert out is not None
        return out

    def read_mask(self, row_off: int, col_off: int, height: int, width: int) -> np.ndarray:
        """Validity of a window as bool (height, width).

        Valid means: inside the image, GDAL's dataset mask non-zero (rasterio's
        ``dataset_mask``: an internal/external mask or alpha band as is, otherwise nodata only
        where *all* bands of the file equal their nodata value, whatever bands are selected),
        and for float data not NaN in any selected band. Plain TIFFs read by tifffile are all
        valid.
        """
        _, valid = self._read(row_off, col_off, height, width, data=False, mask=True)
        assert valid is not None
        return valid

    def read_with_mask(
        self, row_off: int, col_off: int, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`read` and :meth:`read_mask` of the same window, reading the pixels once."""
        out, valid = self._read(row_off, col_off, height, width, data=True, mask=True)
        assert out is not None and valid is not None
        return out, valid

    # --- lifetime ----------------------------------------------------------------------------

    def reopen(self) -> RasterSource:
        """A new, independent handle on the same file, bands and backend."""
        kind = "rasterio" if isinstance(self._backend, RasterioBackend) else "tifffile"
        return RasterSource(self.path, self.bands, _kind=kind)

    def __reduce__(self) -> tuple[Any, ...]:
        kind = "rasterio" if isinstance(self._backend, RasterioBackend) else "tifffile"
        return (_reopen, (self.path, self.bands, kind))

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._backend.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RasterSource:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.width}x{self.height}"
        return f"RasterSource({self.path!r}, bands={list(self.bands)}, {state}, {self.backend})"


def _reopen(path: str, bands: tuple[int, ...], kind: str) -> RasterSource:
    return RasterSource(path, bands, _kind=kind)


def open_raster(path: str | os.PathLike[str], bands: Sequence[int] | None = None) -> RasterSource:
    """Open a raster for windowed reading.

    ``path`` goes to GDAL untouched, so ``/vsicurl/``, ``/vsizip/`` etc. work. ``bands`` are
    1-based like rasterio's (``--bands 1,2,3``); the default is every band.
    """
    return RasterSource(path, bands)
