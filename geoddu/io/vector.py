"""Vector layers against rasters: class labels burnt into a raster window.

A vector label file (GeoPackage, GeoJSON, Shapefile, anything pyogrio reads) is read once per
target CRS and kept, reprojected, with its spatial index; each window then only rasterises the
features its bounds touch, so training on a huge scene never rasterises the whole layer.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from geoddu.errors import GeodduError, first_line

__all__ = [
    "aoi_geometry",
    "geometry_window_mask",
    "pyogrio_path",
    "rasterize_labels",
    "read_vector",
    "read_vector_labels",
]

_CACHE: dict[tuple[str, int, str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


def read_vector_labels(vector_path: str | os.PathLike, class_column: str, crs: Any) -> Any:
    """The label layer as a GeoDataFrame in `crs` (cached per file version, column and CRS)."""
    from rasterio.crs import CRS

    path = Path(vector_path)
    if not path.exists():
        raise GeodduError(f"{path}: vector labels not found")
    if crs is None:
        raise GeodduError(f"{path}: the image has no CRS, so vector labels cannot be placed on it")
    target = CRS.from_user_input(crs)
    key = (str(path.resolve()), path.stat().st_mtime_ns, class_column, target.to_wkt())
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    # The same reading rules as an area of interest: one clear error per problem, invalid
    # geometries repaired with a warning, reprojected to the image's CRS.
    gdf = read_vector(path, target, what="vector labels")
    if class_column not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != gdf.geometry.name)
        raise GeodduError(f"{path}: no column {class_column!r} (columns: {cols or 'none'})")
    gdf = gdf[[class_column, gdf.geometry.name]]
    gdf.sindex  # build the spatial index once, not in every window  # noqa: B018
    with _CACHE_LOCK:
        _CACHE[key] = gdf
    return gdf


def rasterize_labels(
    vector_path: str | os.PathLike,
    class_column: str,
    window_transform: Affine,
    out_shape: tuple[int, int],
    crs: Any,
    class_ids: Mapping[Any, int],
    *,
    fill: int = 255,
    all_touched: bool = False,
) -> np.ndarray:
    """Class ids (uint8, `out_shape`) of the polygons under a raster window.

    `window_transform` is the window's own affine transform (the raster's transform shifted to
    the window's corner) and `crs` the raster's CRS; the vector is reprojected to it. A feature's
    value in `class_column` maps to its class id through `class_ids` (compared as text, so 1 and
    "1" match); features with other values are skipped. Pixels no polygon covers get `fill`.
    Where polygons overlap, the later feature wins.
    """
    from rasterio.features import rasterize
    from rasterio.transform import array_bounds
    from shapely.geometry import box

    gdf = read_vector_labels(vector_path, class_column, crs)
    height, width = int(out_shape[0]), int(out_shape[1])
    out = np.full((height, width), fill, np.uint8)
    if height == 0 or width == 0 or gdf.empty:
        return out
    west, south, east, north = array_bounds(height, width, window_transform)
    hits = gdf.sindex.query(box(west, south, east, north), predicate="intersects")
    if len(hits) == 0:
        return out
    lookup = {str(k): int(v) for k, v in class_ids.items()}
    sub = gdf.iloc[np.sort(hits)]
    shapes = [
        (geom, lookup[str(value)])
        for geom, value in zip(sub.geometry, sub[class_column], strict=True)
        if str(value) in lookup
    ]
    if not shapes:
        return out
    return rasterize(
        shapes,
        out_shape=(height, width),
        transform=window_transform,
        fill=fill,
        dtype="uint8",
        all_touched=all_touched,
    )



# -- areas of interest ------------------------------------------------------------------------
# pyogrio parses a path as a URL (urllib): ';' starts parameters, '?' a query, '#' a fragment,
# and "name:" a scheme, so `aoi;x.gpkg` would reach GDAL as `aoi`.
_URL_CHARS = re.compile(r"[;?#]|^[A-Za-z][A-Za-z0-9+.-]+:")


def _mangled(text: str) -> bool:
    return bool(_URL_CHARS.search(text))


@contextmanager
def pyogrio_path(path: str | os.PathLike) -> Iterator[str]:
    """A name for the local file `path` that pyogrio hands to GDAL unchanged.

    Any legal file name must work. Where pyogrio would misread it, a private folder of symbolic
    links stands in: one to the file's folder (for a folder name pyogrio misreads), or one per
    file sharing its stem (a shapefile's .shp, .dbf, .shx... for a file name it misreads).
    """
    spath = os.fspath(path)
    if spath.startswith("/vsi") or "://" in spath or not _mangled(spath):
        yield spath
        return
    alias = Path(tempfile.mkdtemp(prefix="geoddu-path-"))
    try:
        try:
            safe = _alias(Path(spath).absolute(), alias)
        except OSError as exc:
            raise GeodduError(f"{spath}: cannot pass this file name to GDAL ({exc})") from exc
        yield safe
    finally:
        shutil.rmtree(alias, ignore_errors=True)  # removes the links, never their targets


def _alias(full: Path, alias: Path) -> str:
    folder = full.parent
    if _mangled(str(folder)):
        link = alias / "d"
        link.symlink_to(folder, target_is_directory=True)
        folder = link
    if not _mangled(full.name):
        return str(folder / full.name)
    files = alias / "f"
    files.mkdir()
    stem = full.name[: len(full.name) - len(full.suffix)] if full.suffix else full.name
    for sibling in full.parent.iterdir():
        if sibling.name == full.name or sibling.name.startswith(f"{stem}."):
            (files / f"in{sibling.name[len(stem):]}").symlink_to(sibling)
    return str(files / f"in{full.suffix}")


def read_vector(
    path: str | os.PathLike,
    crs: Any,
    *,
    layer: str | None = None,
    where: str | None = None,
    what: str = "vector layer",
) -> Any:
    """Any vector GDAL reads, checked and reprojected to `crs`, invalid geometries repaired.

    Every problem is one GeodduError line: missing file, unreadable, empty layer (or empty
    selection), no CRS. Invalid geometries are repaired with `make_valid`, with a warning.
    """
    import warnings

    import geopandas as gpd
    from rasterio.crs import CRS

    spath = os.fspath(path)
    if "://" not in spath and not spath.startswith("/vsi") and not Path(spath).exists():
        raise GeodduError(f"{spath}: {what} not found")
    if crs is None:
        raise GeodduError(f"{spath}: the raster has no CRS, so the {what} cannot be placed on it")
    try:
        with pyogrio_path(spath) as readable:
            gdf = gpd.read_file(readable, layer=layer, where=where)
    except Exception as exc:  # noqa: BLE001 - any unreadable layer is one user error
        raise GeodduError(f"{spath}: cannot read {what} ({first_line(exc)})") from exc
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.empty:
        sel = f" matching {where!r}" if where else ""
        raise GeodduError(f"{spath}: the {what} has no features{sel}")
    if gdf.crs is None:
        raise GeodduError(f"{spath}: the {what} has no CRS")
    invalid = ~gdf.geometry.is_valid
    if invalid.any():
        warnings.warn(
            f"{spath}: repaired {int(invalid.sum())} invalid geometr"
            f"{'y' if invalid.sum() == 1 else 'ies'} with make_valid",
            stacklevel=2,
        )
        gdf = gdf.set_geometry(gdf.geometry.make_valid())
    target = CRS.from_user_input(crs)
    return gdf.to_crs(target) if gdf.crs != target else gdf


def aoi_geometry(
    path: str | os.PathLike,
    crs: Any,
    bounds: tuple[float, float, float, float],
    *,
    layer: str | None = None,
    where: str | None = None,
) -> Any:
    """The union of an area-of-interest layer in the raster's CRS, clipped to its `bounds`."""
    import shapely
    from shapely.geometry import box

    gdf = read_vector(path, crs, layer=layer, where=where, what="area of interest")
    polys = gdf.geometry[gdf.geometry.geom_type.isin(["Polygon", "MultiPolygon"])]
    if polys.empty:
        raise GeodduError(f"{os.fspath(path)}: the area of interest has no polygons")
    area = shapely.intersection(shapely.union_all(polys.values), box(*bounds))
    if area.is_empty:
        raise GeodduError(f"{os.fspath(path)}: the area of interest does not overlap the raster")
    return area


def geometry_window_mask(geometry: Any, window_transform: Affine, shape: tuple[int, int]):
    """True where a pixel's centre lies inside `geometry` (rasterio's default rule)."""
    from rasterio.features import geometry_mask

    return geometry_mask([geometry], out_shape=shape, transform=window_transform, invert=True)
