"""`--min-area` with GDAL's sieve (`GDALSieveFilter`, through `rasterio.features.sieve`): the
default.

GDAL's sieve works on the whole map at once, so nothing depends on windows; it is fast (0.8 s
from scratch files where geoddu's own exact sieve took 27.5 s on a 4096² map, and a third of
its memory: docs/vectorize.md). To keep memory
bounded on a map larger than memory, nothing is held as an array: the class ids and the
validity mask go window by window into two compressed GeoTIFFs in the output's private scratch
folder, GDAL reads both from there line by line, and writes the sieved classes into a file
mapped into memory (pages the kernel can write back and drop). The polygonising pass then reads
that file one band of window rows at a time.

Nodata is GDAL's mask: never a neighbour, never changed (`mask=`), 4-connectivity as the
polygons. Where GDAL's rule differs from geoddu's exact sieve (`sieve="exact"`,
`geoddu.vectorize.exact_sieve`): docs/vectorize.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import rasterio.features
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoddu.errors import Cancelled, GeodduError

from .class_windows import NONE, CancelFn, ClassReader, ProgressFn

# Tiled and deflated: the mask of a big map is a few kB, the classes compress well too.
_SCRATCH = dict(driver="GTiff", count=1, dtype="uint8", tiled=True, blockxsize=256,
                blockysize=256, compress="deflate")


class SievedMap:
    """The sieved class map on disk, read as windows (uint8, NONE where there is no polygon),
    one band of window rows held at a time."""

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path, self.width, self.height = path, width, height
        self._rows: tuple[int, np.ndarray] | None = None

    def read(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        if self._rows is None or self._rows[0] != r0 or self._rows[1].shape[0] != h:
            band = np.fromfile(self.path, np.uint8, count=h * self.width,
                               offset=r0 * self.width)
            self._rows = (r0, band.reshape(h, self.width))
        return self._rows[1][:, c0 : c0 + w].copy()


def gdal_sieve(
    reader: ClassReader,
    windows: list[tuple[int, int, int, int]],
    threshold: int,
    folder: Path,
    progress: ProgressFn,
    cancel: CancelFn | None,
) -> SievedMap:
    """Regions smaller than `threshold` pixels merged by GDAL's sieve, into `folder`."""
    width, height = reader.source.width, reader.source.height
    # georeferenced like the map, so that GDAL has nothing to warn about
    where = dict(width=width, height=height, crs=reader.source.crs,
                 transform=reader.source.transform, **_SCRATCH)
    classes, valid = folder / "classes.tif", folder / "valid.tif"
    sieved = folder / "sieved.u8"
    try:
        with rasterio.open(classes, "w", **where) as c, rasterio.open(valid, "w", **where) as m:
            for index, (r0, c0, h, w) in enumerate(windows):
                if cancel is not None and cancel():
                    raise Cancelled("vectorize cancelled; nothing was written")
                if index and c0 == 0:
                    reader.next_row()
                cls = reader.read(r0, c0, h, w)
                c.write(cls, 1, window=Window(c0, r0, w, h))
                m.write((cls != NONE).view(np.uint8), 1, window=Window(c0, r0, w, h))
                progress("sieve", index, len(windows))
        out = np.memmap(sieved, np.uint8, "w+", shape=(height, width))
        # rasterio refuses a size that is not below the map's: no region is as large anyway
        # but one covering it all, which a sieve never changes.
        size = min(threshold, width * height - 1)
        with rasterio.open(classes) as c, rasterio.open(valid) as m:
            rasterio.features.sieve(rasterio.band(c, 1), size, out=out,
                                    mask=rasterio.band(m, 1), connectivity=4)
        out.flush()
        del out
    except (OSError, RasterioError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise GeodduError(f"sieving {reader.src} in {folder}: {first}") from exc
    classes.unlink()
    valid.unlink()
    progress("sieve", len(windows), len(windows))
    return SievedMap(sieved, width, height)
