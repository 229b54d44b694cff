"""Reference data against a class map: the sample error matrix (rows = map class, columns =
reference class) and every sample unit that could not be used, with why.

Three kinds of reference:

* points (any vector OGR reads, any CRS: reprojected to the map's): the map class is read at
  each point with a one-pixel windowed read; one point is one sample unit;
* polygons: each polygon is rasterised onto the map's grid (pixel centres inside, rasterio's
  rule) and its pixels are counted by map class: the matrix then holds **pixel counts**, not
  sample units (see docs/accuracy.md for what that does to the standard errors);
* a reference raster on exactly the map's grid: every pixel pair, counted blockwise.

Nothing is dropped silently: units outside the map, on the map's nodata, or with an empty or
unknown reference class are counted and listed.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoddu.errors import GeodduError, first_line

from .map_info import NODATA, MapInfo

__all__ = ["Skipped", "ReferenceSample", "ClassLookup", "read_reference"]

OUTSIDE = "outside the map"
ON_NODATA = "on the map's nodata"
# Polygons and rasters lose pixels, not units: counted apart so that no sum mixes the two.
NODATA_PIXELS = "pixels on the map's nodata"
EMPTY = "no reference class"
UNKNOWN = "unknown reference class"
UNKNOWN_PIXELS = "pixels of an unknown reference class"
# How many skipped units are listed one by one (all are counted).
LISTED = 200


@dataclass
class Skipped:
    """A reference unit left out of the matrix: its feature index (or None for raster
    pixels), the reason, and the value it had."""

    index: int | None
    reason: str
    value: str | None = None
    pixels: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "reason": self.reason, "value": self.value,
                "pixels": self.pixels}


@dataclass
class ReferenceSample:
    """The sample error matrix over class ids 0..k-1, and what was left out."""

    counts: np.ndarray
    unit: str  # "points" or "pixels"
    kind: str  # "points", "polygons", "points and polygons", "raster"
    used: int
    skipped: list[Skipped] = field(default_factory=list)
    skipped_counts: dict[str, int] = field(default_factory=dict)

    def skip(self, item: Skipped, amount: int = 1) -> None:
        self.skipped_counts[item.reason] = self.skipped_counts.get(item.reason, 0) + amount
        if len(self.skipped) < LISTED:
            self.skipped.append(item)


class ClassLookup:
    """A reference value to a map class id: by the map's category name (case-insensitive) or
    by class id (an integer, or text holding one)."""

    def __init__(self, info: MapInfo, n_classes: int) -> None:
        self.n = n_classes
        self.by_name = {}
        for i in range(n_classes):
            self.by_name.setdefault(info.name_of(i).strip().casefold(), i)

    def __call__(self, value: Any) -> tuple[int | None, str | None]:
        """(class id, None), or (None, the reason it has none)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None, EMPTY
        text = str(value).strip()
        if not text:
            return None, EMPTY
        hit = self.by_name.get(text.casefold())
        if hit is not None:
            return hit, None
        try:
            number = float(text)
        except ValueError:
            return None, UNKNOWN
        if number.is_integer() and 0 <= number < self.n:
            return int(number), None
        return None, UNKNOWN


def read_reference(
    info: MapInfo,
    reference: str | os.PathLike[str],
    n_classes: int,
    *,
    class_column: str | None = None,
    layer: str | None = None,
) -> ReferenceSample:
    """The error matrix of ``reference`` (a vector layer or a raster) against the map."""
    path = os.fspath(reference)
    if _is_raster(path):
        return _raster_reference(info, path, n_classes)
    if class_column is None:
        raise GeodduError(f"{path}: give --class-column, the column holding the reference class")
    return _vector_reference(info, path, n_classes, class_column, layer)


def _is_raster(path: str) -> bool:
    """A file GDAL opens as a raster (and not as a vector layer)."""
    import rasterio
    from rasterio.errors import RasterioError

    if path.lower().endswith((".gpkg", ".geojson", ".json", ".shp", ".fgb", ".kml", ".gml",
                              ".csv", ".sqlite")):
        return False
    try:
        with rasterio.open(path):
            return True
    except (RasterioError, OSError):
        return False


def _vector_reference(info: MapInfo, path: str, n_classes: int, class_column: str,
                      layer: str | None) -> ReferenceSample:
    from geoddu.io.vector import read_vector

    if info.crs is None:
        raise GeodduError(f"{info.path}: has no CRS, so reference data cannot be placed on it")
    gdf = read_vector(path, info.crs, layer=layer, what="reference layer")
    if class_column not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name)
        raise GeodduError(f"{path}: no column {class_column!r} (columns: {cols or 'none'})")
    kinds = set(gdf.geometry.geom_type)
    points = kinds & {"Point", "MultiPoint"}
    polygons = kinds & {"Polygon", "MultiPolygon"}
    if kinds - points - polygons:
        other = ", ".join(sorted(kinds - points - polygons))
        raise GeodduError(f"{path}: reference features must be points or polygons, not {other}")
    lookup = ClassLookup(info, n_classes)
    kind = ("points and polygons" if points and polygons
            else "points" if points else "polygons")
    sample = ReferenceSample(np.zeros((n_classes, n_classes), np.int64),
                             "pixels" if polygons else "points", kind, 0)
    import rasterio

    with rasterio.open(info.path) as ds:
        for index, (geom, value) in enumerate(zip(gdf.geometry, gdf[class_column],
                                                  strict=True)):
            ref, why = lookup(value)
            # An empty field reads as None or as NaN, depending on the pandas version.
            missing = value is None or (isinstance(value, float) and value != value)
            shown = None if missing else str(value)
            if ref is None:
                sample.skip(Skipped(index, why, shown))
                continue
            if geom.geom_type in ("Point", "MultiPoint"):
                for point in getattr(geom, "geoms", [geom]):
                    _add_point(sample, ds, info, index, point, ref, shown)
            else:
                _add_polygon(sample, ds, info, index, geom, ref, shown)
    return sample


def _add_point(sample: ReferenceSample, ds: Any, info: MapInfo, index: int, point: Any,
               ref: int, shown: str | None) -> None:
    from rasterio.windows import Window

    col, row = ~info.transform * (point.x, point.y)
    r, c = math.floor(row), math.floor(col)
    if not (0 <= r < info.height and 0 <= c < info.width):
        sample.skip(Skipped(index, OUTSIDE, shown))
        return
    mapped = int(ds.read(1, window=Window(c, r, 1, 1))[0, 0])
    if mapped == NODATA or mapped == info.nodata or not 0 <= mapped < sample.counts.shape[0]:
        sample.skip(Skipped(index, ON_NODATA, shown))
        return
    sample.counts[mapped, ref] += 1
    sample.used += 1


def _add_polygon(sample: ReferenceSample, ds: Any, info: MapInfo, index: int, geom: Any,
                 ref: int, shown: str | None) -> None:
    from rasterio.features import geometry_mask
    from rasterio.windows import Window, from_bounds
    from rasterio.windows import transform as window_transform

    # Only the polygon's own window of the map is read and rasterised.
    box = from_bounds(*geom.bounds, transform=info.transform)
    c0 = max(0, math.floor(box.col_off))
    r0 = max(0, math.floor(box.row_off))
    c1 = min(info.width, math.ceil(box.col_off + box.width))
    r1 = min(info.height, math.ceil(box.row_off + box.height))
    if c1 <= c0 or r1 <= r0:
        sample.skip(Skipped(index, OUTSIDE, shown))
        return
    win = Window(c0, r0, c1 - c0, r1 - r0)
    inside = geometry_mask([geom], out_shape=(int(win.height), int(win.width)),
                           transform=window_transform(win, info.transform), invert=True)
    if not inside.any():
        # No pixel centre inside: a sliver, or a polygon off the map.
        sample.skip(Skipped(index, OUTSIDE, shown))
        return
    values = ds.read(1, window=win)[inside].astype(np.int64)
    valid = (values != NODATA) & (values < sample.counts.shape[0])
    if info.nodata is not None:
        valid &= values != info.nodata
    lost = int((~valid).sum())
    if lost:
        sample.skip(Skipped(index, NODATA_PIXELS, shown, pixels=lost), lost)
    if valid.any():
        sample.counts[:, ref] += np.bincount(values[valid], minlength=sample.counts.shape[0])
        sample.used += int(valid.sum())


def _raster_reference(info: MapInfo, path: str, n_classes: int) -> ReferenceSample:
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    from .map_info import pam_category_names

    try:
        ref_ds = rasterio.open(path)
    except RasterioError as exc:
        raise GeodduError(f"{path}: cannot read the reference raster ({first_line(exc)})") from exc
    with ref_ds, rasterio.open(info.path) as map_ds:
        same = (ref_ds.width, ref_ds.height) == (info.width, info.height) \
            and ref_ds.crs == info.crs and ref_ds.transform.almost_equals(info.transform)
        if not same:
            raise GeodduError(
                f"{path}: the reference raster is not on the map's grid (same CRS, transform "
                "and size); warp it onto the map first (gdalwarp -te ... -tr ... -r near)")
        if ref_ds.count != 1 or np.dtype(ref_ds.dtypes[0]).kind not in "iub":
            raise GeodduError(f"{path}: a reference raster has one band of integer class ids")
        # Reference ids are the map's ids, unless the reference names its classes: then by name.
        from geoddu.vectorize.class_windows import class_names_of

        names = class_names_of(ref_ds.tags()) or pam_category_names(path)
        lookup = ClassLookup(info, n_classes)
        remap = np.full(256, -1, np.int64)
        for value in range(255):
            key = names[value] if names and value < len(names) else value
            ref, _ = lookup(key)
            remap[value] = -1 if ref is None else ref
        ref_nodata = ref_ds.nodata
        sample = ReferenceSample(np.zeros((n_classes, n_classes), np.int64), "pixels",
                                 "raster", 0)
        unknown: Counter[int] = Counter()
        size = 2048
        for r0 in range(0, info.height, size):
            for c0 in range(0, info.width, size):
                win = Window(c0, r0, min(size, info.width - c0), min(size, info.height - r0))
                m = map_ds.read(1, window=win).astype(np.int64).ravel()
                r = ref_ds.read(1, window=win).astype(np.int64).ravel()
                has_ref = r != NODATA
                if ref_nodata is not None:
                    has_ref &= r != int(ref_nodata)
                r_ok = has_ref & (r >= 0) & (r < 256)
                ref_id = np.where(r_ok, remap[np.clip(r, 0, 255)], -1)
                bad_ref = has_ref & (ref_id < 0)
                if bad_ref.any():
                    for v, cnt in zip(*np.unique(r[bad_ref], return_counts=True), strict=True):
                        unknown[int(v)] += int(cnt)
                map_ok = (m != NODATA) & (m >= 0) & (m < n_classes)
                if info.nodata is not None:
                    map_ok &= m != info.nodata
                on_nodata = (ref_id >= 0) & ~map_ok
                if on_nodata.any():
                    lost = int(on_nodata.sum())
                    sample.skipped_counts[NODATA_PIXELS] = \
                        sample.skipped_counts.get(NODATA_PIXELS, 0) + lost
                use = (ref_id >= 0) & map_ok
                pairs = m[use] * n_classes + ref_id[use]
                sample.counts += np.bincount(pairs, minlength=n_classes**2).reshape(
                    n_classes, n_classes)
                sample.used += int(use.sum())
        if sample.skipped_counts.get(NODATA_PIXELS):
            sample.skipped.append(Skipped(None, NODATA_PIXELS,
                                          pixels=sample.skipped_counts[NODATA_PIXELS]))
        for value, cnt in sorted(unknown.items()):
            sample.skip(Skipped(None, UNKNOWN_PIXELS, str(value), pixels=cnt), cnt)
    return sample
