"""What an accuracy assessment needs to know about a class map: its class names, the area of
a pixel, and the mapped pixel count of each class (one blockwise pass, never the whole map).

Shared by ``geoddu assess`` and ``geoddu sample`` (the strata of a sample are the map classes).
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from geoddu.errors import GeodduError, first_line

__all__ = ["MapInfo", "class_pixel_counts", "open_class_map", "pam_category_names"]

NODATA = 255  # geoddu's class maps: 255 is "no class" (geoddu.io.writer.CLASS_NODATA)


def pam_category_names(path: str | os.PathLike[str]) -> list[str] | None:
    """Band 1's category names from GDAL's PAM sidecar ``NAME.aux.xml`` (what geoddu's
    ClassMapWriter, QGIS and ArcGIS write), or None."""
    sidecar = Path(f"{os.fspath(path)}.aux.xml")
    if not sidecar.is_file():
        return None
    try:
        root = ET.parse(sidecar).getroot()
    except (ET.ParseError, OSError):
        return None
    for band in root.iter("PAMRasterBand"):
        if band.get("band", "1") != "1":
            continue
        cats = band.find("CategoryNames")
        if cats is not None:
            names = [c.text or "" for c in cats.findall("Category")]
            if any(names):
                return names
    return None


@dataclass
class MapInfo:
    """A one-band integer class map, described (not read)."""

    path: str
    width: int
    height: int
    crs: Any
    transform: Any
    nodata: int | None
    class_names: list[str] | None  # from CLASS_NAMES tags or the PAM categories
    pixel_area_m2: float | None  # None where the CRS is geographic or missing

    def name_of(self, class_id: int) -> str:
        if self.class_names and 0 <= class_id < len(self.class_names):
            name = self.class_names[class_id]
            if name:
                return name
        return f"class {class_id}"

    def require_pixel_area(self) -> float:
        if self.pixel_area_m2 is None:
            raise GeodduError(
                f"{self.path}: its CRS is geographic (degrees) or missing, so a pixel has no "
                "single area in hectares; reproject the map to a projected, equal-area CRS "
                "(gdalwarp -t_srs ...) and assess that")
        return self.pixel_area_m2


def open_class_map(path: str | os.PathLike[str]) -> MapInfo:
    """Check that ``path`` is a one-band integer class map and describe it."""
    import rasterio
    from rasterio.errors import RasterioError

    from geoddu.vectorize.class_windows import class_names_of

    spath = os.fspath(path)
    if "://" not in spath and not spath.startswith("/vsi") and not Path(spath).exists():
        raise GeodduError(f"{spath}: class map not found")
    try:
        with rasterio.open(spath) as ds:
            if ds.count != 1:
                raise GeodduError(f"{spath}: has {ds.count} bands; a class map has exactly one")
            if np.dtype(ds.dtypes[0]).kind not in "iub":
                raise GeodduError(
                    f"{spath}: holds {ds.dtypes[0]} values; a class map holds integer class ids")
            names = class_names_of(ds.tags()) or pam_category_names(spath)
            nodata = None if ds.nodata is None else int(ds.nodata)
            crs, transform = ds.crs, ds.transform
            width, height = ds.width, ds.height
    except RasterioError as exc:
        raise GeodduError(f"{spath}: cannot read the class map ({first_line(exc)})") from exc
    return MapInfo(spath, width, height, crs, transform, nodata, names,
                   _pixel_area(crs, transform))


def _pixel_area(crs: Any, transform: Any) -> float | None:
    """m² of one pixel from the transform (|det|), in a projected CRS's linear unit."""
    if crs is None or not crs.is_projected:
        return None
    try:
        factor = float(crs.linear_units_factor[1])  # metres per CRS unit (1 for metres)
    except Exception:  # noqa: BLE001 - a CRS without a unit: assume metres, as GDAL does
        factor = 1.0
    area = abs(transform.a * transform.e - transform.b * transform.d) * factor**2
    return area if math.isfinite(area) and area > 0 else None


def class_pixel_counts(
    info: MapInfo,
    *,
    window_size: int = 2048,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Pixels of each class id 0..max (nodata and 255 excluded), one window at a time."""
    import rasterio
    from rasterio.windows import Window

    counts = np.zeros(256, np.int64)
    rows = range(0, info.height, window_size)
    with rasterio.open(info.path) as ds:
        for done, r0 in enumerate(rows, 1):
            h = min(window_size, info.height - r0)
            for c0 in range(0, info.width, window_size):
                w = min(window_size, info.width - c0)
                block = ds.read(1, window=Window(c0, r0, w, h))
                valid = block != NODATA
                if info.nodata is not None:
                    valid &= block != info.nodata
                values = block[valid]
                if values.size and (values.min() < 0 or values.max() > 255):
                    raise GeodduError(f"{info.path}: class ids must be 0-254")
                counts += np.bincount(values.astype(np.int64).ravel(), minlength=256)[:256]
            if progress is not None:
                progress(done, len(rows))
    counts[NODATA] = 0
    last = int(np.nonzero(counts)[0].max()) + 1 if counts.any() else 0
    return counts[:last]
