"""Class maps for the vectorize tests: written by rasterio, 200 x 300 pixels of 10 m, so that
64-pixel windows cut every map both ways; and the references the layers are compared with."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.features
import shapely
from rasterio.transform import from_origin

H, W = 200, 300
WIN = 64
PIXEL = 10.0  # m: pixel area 100 m^2
TRANSFORM = from_origin(500000, 4000000, PIXEL, PIXEL)
EPSG = 32631
NAMES = ["water", "urban", "forest", "crop", "road"]


def write_classes(path: Path, cls: np.ndarray, *, crs=f"EPSG:{EPSG}", names=NAMES) -> Path:
    profile = dict(
        driver="GTiff",
        width=cls.shape[1],
        height=cls.shape[0],
        count=1,
        dtype="uint8",
        transform=TRANSFORM,
        nodata=255,
        tiled=True,
        blockxsize=64,
        blockysize=64,
    )
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(cls, 1)
        if names is not None:
            ds.update_tags(CLASS_NAMES=json.dumps(names))
    return path


def blocky(seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """Wavy blocks of 4 classes, a nodata patch, and a long class-4 road across many windows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = rng.integers(0, 4, (16, 16)).astype(np.uint8)
    by = (yy + (4 * np.sin(xx / 7.0)).astype(int)) // 21 + 1
    bx = (xx + (4 * np.cos(yy / 9.0)).astype(int)) // 27 + 1
    cls = base[by, bx]
    if noise:
        speck = rng.random((H, W)) < noise
        cls[speck] = rng.integers(0, 4, int(speck.sum()))
    cls[140:175, 20:70] = 255
    # An L-shaped road: crosses window borders in both directions, one region.
    cls[10:190, 100:104] = 4
    cls[120:124, 100:280] = 4
    return cls


def pixel_regions(cls: np.ndarray) -> list[tuple[int, shapely.Geometry]]:
    """Reference: the whole array polygonised at once, in map coordinates."""
    return [
        (int(v), shapely.geometry.shape(g))
        for g, v in rasterio.features.shapes(
            cls, mask=cls != 255, connectivity=4, transform=TRANSFORM
        )
    ]


def canonical(gdf: gpd.GeoDataFrame) -> list[tuple[int, bytes]]:
    geoms = shapely.normalize(gdf.geometry.values)
    return sorted(zip(gdf.class_id.tolist(), shapely.to_wkb(geoms), strict=True))



def burn(gdf: gpd.GeoDataFrame, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """A layer burnt back into a class raster (255 where no polygon): pixel-aligned polygons
    give back exactly the pixels they were made of."""
    return rasterio.features.rasterize(
        zip(gdf.geometry, gdf.class_id, strict=True),
        out_shape=shape,
        transform=TRANSFORM,
        fill=255,
        dtype="uint8",
    )


def cells(seed: int = 0) -> np.ndarray:
    """Random classes in 2 x 2 cells (regions of 4, 8, 12... pixels) and a nodata patch: most
    regions are small, and many small regions are each other's largest neighbour."""
    rng = np.random.default_rng(seed)
    cls = rng.integers(0, 4, (H // 2, W // 2)).astype(np.uint8).repeat(2, 0).repeat(2, 1)
    cls[150:170, 30:60] = 255
    return cls


def region_sizes(cls: np.ndarray) -> np.ndarray:
    """Pixels of every 4-connected region of a class raster (255: none)."""
    return np.array(
        [
            shapely.geometry.shape(g).area
            for g, _ in rasterio.features.shapes(cls, mask=cls != 255, connectivity=4)
        ]
    )
