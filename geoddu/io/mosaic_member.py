"""One input of a mosaic (geoddu.io.mosaic), from its header: its grid, bands, data type,
nodata and mask, and where it lies in the mosaic; no pixel is read."""

from __future__ import annotations

import os
from dataclasses import dataclass

import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags
from rasterio.errors import RasterioError
from rasterio.windows import Window

from geoddu.errors import GeodduError, first_line


@dataclass(frozen=True)
class Member:
    """One input of a mosaic, from its header. ``source`` is what the VRT reads: the input
    itself, or its warped VRT; ``transform``/``width``/``height`` are ``source``'s grid."""

    path: str
    source: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    masked: bool  # a per-dataset mask (internal, .msk) or alpha band: GDAL's mask wins
    colorinterp: tuple[str, ...]
    block: tuple[int, int]
    row_off: int = 0
    col_off: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path.rstrip("/")) or self.path

    @property
    def resolution(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    @property
    def north_up(self) -> bool:
        t = self.transform
        return t.b == 0 and t.d == 0 and t.a > 0 and t.e < 0

    @property
    def window(self) -> Window:
        """Where this input lies in the mosaic."""
        return Window(self.col_off, self.row_off, self.width, self.height)


def _absolute(path: str) -> str:
    # The VRT lives in a temporary folder: local inputs are named absolutely, GDAL paths
    # (/vsicurl/..., URLs) as given.
    if path.startswith("/vsi") or "://" in path:
        return path
    return os.path.abspath(path)


def read_member(path: str, source: str | None = None) -> Member:
    """An input's header (no pixel is read)."""
    source = source or _absolute(path)
    if not (source.startswith("/vsi") or "://" in source) and not os.path.exists(source):
        raise GeodduError(f"{path}: no such file")
    try:
        with rasterio.open(source) as ds:
            flags = ds.mask_flag_enums
            return Member(
                path=path,
                source=source,
                crs=ds.crs,
                transform=ds.transform,
                width=ds.width,
                height=ds.height,
                count=ds.count,
                dtype=ds.dtypes[0] if len(set(ds.dtypes)) == 1 else "mixed",
                nodata=None if ds.nodata is None else float(ds.nodata),
                masked=any(MaskFlags.per_dataset in f for f in flags),
                colorinterp=tuple(c.name for c in ds.colorinterp),
                block=tuple(int(v) for v in ds.block_shapes[0]),  # type: ignore[arg-type]
            )
    except RasterioError as exc:
        raise GeodduError(f"{path}: not a raster GDAL can open: {first_line(exc)}") from exc
