"""A small georeferenced scene made of synthetic images, for `geoddu demo`.

Rows of the paper's synthetic images ((k*32) x 32 px each) are stacked into one GeoTIFF with a
real CRS and geotransform, separated by `gap` rows of nodata subimages. The streaming engine
skips all-nodata subimages, so each synthetic image is segmented as one DDU-Net mosaic with
empty neighbours, as the model saw it in training.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning

from .synthetic import CLASSES, SUBIMAGE, generate

# UTM zone 31N, 0.5 m pixels (DeepGlobe's resolution), somewhere in the Netherlands.
SCENE_CRS = CRS.from_epsg(32631)
SCENE_ORIGIN = (600000.0, 5770000.0)
PIXEL_SIZE = 0.5
NODATA = 255


@dataclass
class Scene:
    image: np.ndarray  # (H, W) uint8, 0 background, 255 circles
    valid: np.ndarray  # (H, W) bool, False in the gap rows
    labels: np.ndarray  # (H, W) uint8 class ids, 255 in the gap rows
    transform: Affine
    crs: CRS


def make_scene(k: int = 3, rows: int = 8, gap: int = 1, seed: int = 0) -> Scene:
    """`rows` synthetic images of (k*32) x 32 px, one above the other, `gap` subimages apart."""
    rng = np.random.default_rng([seed, k, 99])
    images, masks = generate(k, rows, rng)
    pitch = SUBIMAGE * (1 + gap)
    height, width = pitch * (rows - 1) + SUBIMAGE, SUBIMAGE * k
    image = np.zeros((height, width), np.uint8)
    valid = np.zeros((height, width), bool)
    labels = np.full((height, width), NODATA, np.uint8)
    for r in range(rows):
        y = r * pitch
        image[y : y + SUBIMAGE] = images[r]
        valid[y : y + SUBIMAGE] = True
        labels[y : y + SUBIMAGE] = masks[r]
    transform = Affine(PIXEL_SIZE, 0, SCENE_ORIGIN[0], 0, -PIXEL_SIZE, SCENE_ORIGIN[1])
    return Scene(image, valid, labels, transform, SCENE_CRS)


def write_scene(scene: Scene, image_path: str | os.PathLike, labels_path: str | os.PathLike
                ) -> None:
    """The image (with an internal nodata mask) and the true class map as GeoTIFFs."""
    h, w = scene.image.shape
    common = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=scene.crs,
                  transform=scene.transform, tiled=True, blockxsize=256, blockysize=256,
                  compress="deflate")
    # 0 and 255 are both image values, so nodata is a mask band rather than a value.
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
            rasterio.open(image_path, "w", **common) as dst:
        dst.write(scene.image, 1)
        dst.write_mask(np.where(scene.valid, 255, 0).astype(np.uint8))
        dst.set_band_description(1, "synthetic grey image")
    with rasterio.open(labels_path, "w", nodata=NODATA, **common) as dst:
        dst.write(scene.labels, 1)
        dst.write_colormap(1, {**{i: (*c["color"], 255) for i, c in enumerate(CLASSES)},
                               NODATA: (0, 0, 0, 0)})
        dst.set_band_description(1, "true class")


def colorize(classes: np.ndarray, colors: list[list[int]], nodata_rgb=(40, 40, 40)) -> np.ndarray:
    """Class ids (H, W) -> RGB (3, H, W) uint8; ids without a colour (nodata) get nodata_rgb."""
    lut = np.tile(np.asarray(nodata_rgb, np.uint8), (256, 1))
    for i, c in enumerate(colors):
        lut[i] = c
    return np.moveaxis(lut[classes], -1, 0)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    """An RGB (3, H, W) uint8 array as a PNG, through GDAL's PNG driver (no imaging library)."""
    path = Path(path)
    _, h, w = rgb.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="PNG", width=w, height=h, count=3,
                           dtype="uint8") as dst:
            dst.write(rgb)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)
    return path
