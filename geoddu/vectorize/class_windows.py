"""Reading a class map window by window: its class ids, its class names and the window grid.

The class map is a one-band integer GeoTIFF; every window comes back as uint8 class ids with
:data:`NONE` where there is no polygon (nodata, outside the raster). Also the progress and
cancel callback types that every pass over the windows takes.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import rasterio
from rasterio.errors import RasterioError

from geoddu.errors import GeodduError
from geoddu.io.raster import open_raster
from geoddu.io.writer import CLASS_NODATA

NONE = CLASS_NODATA  # no polygon: nodata, outside the raster, or a class not asked for

ProgressFn = Callable[[str, int, int], None]
CancelFn = Callable[[], bool]


def class_names_of(tags: dict[str, str]) -> list[str] | None:
    """Class names from a class map's tags: ``CLASS_NAMES`` (JSON list) or ``CLASS_0``..."""
    raw = tags.get("CLASS_NAMES")
    if raw:
        try:
            names = json.loads(raw)
        except ValueError:
            names = None
        if isinstance(names, list) and names:
            return [str(n) for n in names]
    names = []
    while f"CLASS_{len(names)}" in tags:
        names.append(str(tags[f"CLASS_{len(names)}"]))
    return names or None


def window_grid(height: int, width: int, size: int) -> list[tuple[int, int, int, int]]:
    return [
        (r0, c0, min(size, height - r0), min(size, width - c0))
        for r0 in range(0, height, size)
        for c0 in range(0, width, size)
    ]


class ClassReader:
    """Class windows (uint8, NONE where invalid) from the class map's first band."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.source = open_raster(src)
        try:
            if self.source.crs is None:
                raise GeodduError(f"{src}: has no CRS; polygons need one")
            if self.source.count != 1:
                raise GeodduError(
                    f"{src}: has {self.source.count} bands; a class map has exactly one"
                )
            if self.source.dtype.kind not in "iub":
                raise GeodduError(
                    f"{src}: holds {self.source.dtype} values; a class map holds integer class ids"
                )
            try:
                with rasterio.open(src) as ds:
                    tags = ds.tags()
            except RasterioError:
                tags = {}
            self.names = class_names_of(tags)
        except BaseException:
            self.source.close()
            raise

    def next_row(self) -> None:
        """The windows above will not be read again: reopen, which drops their decoded blocks.

        Each block is read once, so GDAL's block cache (``GDAL_CACHEMAX``) would only hold
        blocks nobody asks for again, up to the whole decoded map or the cache size.
        """
        self.source.close()
        self.source = open_raster(self.src)

    def read(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        data, valid = self.source.read_with_mask(r0, c0, h, w)
        band = data[0]
        if band.dtype != np.uint8:
            bad = valid & ((band < 0) | (band >= NONE))
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise GeodduError(
                    f"{self.src}: class id {band[r, c]} at row {r0 + r}, col {c0 + c} is "
                    f"outside 0..{NONE - 1}"
                )
        cls = band.astype(np.uint8, copy=False)
        return np.where(valid, cls, np.uint8(NONE))

    def close(self) -> None:
        self.source.close()
