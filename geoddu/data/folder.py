"""Users' own data: GeoTIFF images with label rasters or vector labels, read window by window.

Layout of DIR::

    DIR/images/*.tif           the images (any raster GDAL reads), same band count
    DIR/labels/*.tif           label rasters named like the images (class ids), or
    DIR/labels.gpkg            one vector layer (.gpkg, .geojson, .json, .shp) with a class column,
                               rasterised on the fly in each image's CRS
    DIR/classes.yaml           the classes (or classes.yml / classes.json), e.g.

        classes:
          - {name: background, color: [0, 0, 0]}
          - {name: building, color: [220, 20, 60]}
        column: class          # vector labels: the attribute holding the class
        fill: background       # vector labels: class of pixels no polygon covers (default: ignored)

A class may give `value`: what the label raster pixel or the vector attribute holds for it
(default: the class index for rasters, the class name for vectors). Label pixels with any other
value, label nodata and image nodata are ignored in the loss and in IoU.

Every image is cut into `patch_size` patches (the last row/column padded with ignored pixels);
patches are split into train/val/test from a seed. Nothing ever reads a whole scene.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine

from ..errors import GeodduError
from ..io.raster import RasterSource, open_raster
from ..io.vector import rasterize_labels, read_vector_labels
from .base import (
    IGNORE,
    PatchDataset,
    data_record,
    dtype_range,
    load_classes_file,
    pixel_size_of,
    split_indices,
    uint8_normalization,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")
VECTOR_NAMES = ("labels.gpkg", "labels.geojson", "labels.json", "labels.shp")
CLASSES_NAMES = ("classes.yaml", "classes.yml", "classes.json")
# Patches sampled to estimate the normalisation of non-8-bit imagery.
NORM_SAMPLES = 16


class FolderDataset(PatchDataset):
    """One split of a folder of images and labels, as fixed-size windows."""

    kind = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        patch_size: int = 512,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        classes_file: str | os.PathLike | None = None,
        class_column: str | None = None,
        bands: list[int] | None = None,
    ) -> None:
        self.split_from(root, split, patch_size, seed, val_fraction, test_fraction)
        self.classes_file = str(classes_file) if classes_file else None
        if not self.root.is_dir():
            raise GeodduError(f"{root}: data folder not found")
        image_dir = self.root / "images"
        images = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
            if image_dir.is_dir() else []
        if not images:
            raise GeodduError(f"{image_dir}: no images (*.tif) found; see `geoddu train --help` "
                              f"for the folder layout")
        self.spec = load_classes_file(classes_file or self._find_classes())
        self.classes = [{"name": c["name"], "color": c["color"]} for c in self.spec["classes"]]
        self.ignore_index = IGNORE
        self.vector = self._find_vector()
        if self.vector is not None:
            self.class_column = class_column or self.spec.get("column")
            if not self.class_column:
                raise GeodduError(
                    f"{self.vector}: name the class attribute with --class-column or "
                    f"`column:` in the classes file"
                )
            self.class_ids = {
                str(c.get("value", c["name"])): k for k, c in enumerate(self.spec["classes"])
            }
            self.fill = self._class_index(self.spec.get("fill"), "fill")
            self.labels = None
        else:
            self.class_column = None
            self.labels = [self._label_for(p) for p in images]
            self.lut = self._raster_lut()
        self.image_paths = images
        self.patches: list[tuple[int, int, int]] = []
        self.shapes = []
        pixel_sizes, units, dtypes = [], set(), []
        count = None
        first_names: tuple[str | None, ...] = ()
        for n, path in enumerate(images):
            with open_raster(path) as src:
                self._check_image(src, n, bands)
                count = count or src.count
                if n == 0:
                    first_names = tuple(src.band_names)
                if bands is None and src.count != count:
                    raise GeodduError(f"{path}: {src.count} bands, but the first image has {count}")
                self.shapes.append((src.height, src.width))
                size, unit = pixel_size_of(src)
                pixel_sizes.append(size)
                units.add(unit)
                if bands is None:
                    dtypes.append(src.dtype)
                else:
                    with open_raster(path, bands=bands) as chosen:
                        dtypes.append(chosen.dtype)
                p = self.patch_size
                self.patches += [
                    (n, r, c) for r in range(0, src.height, p) for c in range(0, src.width, p)
                ]
        self.bands = list(bands) if bands else list(range(1, (count or 0) + 1))
        # The first image's band descriptions (or colour interpretations), for the model card;
        # None when the file names none of the bands trained on.
        names = [first_names[b - 1] if b <= len(first_names) else None for b in self.bands]
        self.band_names = [nm or "" for nm in names] if any(names) else None
        # Every image has a pixel size, in one unit: their median per axis (one value when they
        # agree); else none can be said.
        if pixel_sizes and None not in pixel_sizes and len(units) == 1:
            self.pixel_size = np.median(np.asarray(pixel_sizes), axis=0).tolist()
            self.pixel_units = units.pop()
        else:
            self.pixel_size, self.pixel_units = None, None
        self.dtype = np.result_type(*dtypes)
        # Set by _normalization when it samples patches (not for 8-bit data, whose scale is
        # known without reading).
        self.sampled_range: list[list[float]] | None = None
        parts = split_indices(len(self.patches), seed, val_fraction, test_fraction)
        self.split_patches = {k: [self.patches[i] for i in v] for k, v in parts.items()}
        self.items = self.split_patches[split]
        if not self.items:
            raise GeodduError(
                f"{root}: the {split} split is empty ({len(self.patches)} patches of "
                f"{self.patch_size} px); use a smaller --patch-size or change the fractions"
            )
        self.patch_shape = (self.patch_size, self.patch_size)
        self._handles: dict[str, RasterSource] = {}
        self.normalization = self._normalization()

    # -- layout -------------------------------------------------------------------------------
    def _find_classes(self) -> Path:
        for name in CLASSES_NAMES:
            if (self.root / name).is_file():
                return self.root / name
        raise GeodduError(
            f"{self.root}: no classes file ({', '.join(CLASSES_NAMES)}); write one, e.g. "
            f'classes.json: [{{"name": "background", "color": [0, 0, 0]}}, '
            f'{{"name": "building", "color": [220, 20, 60]}}]'
        )

    def _find_vector(self) -> Path | None:
        found = [self.root / n for n in VECTOR_NAMES if (self.root / n).is_file()]
        if len(found) > 1:
            raise GeodduError(f"{self.root}: several vector label files ({found[0].name}, "
                              f"{found[1].name}); keep one")
        if found:
            return found[0]
        if not (self.root / "labels").is_dir():
            raise GeodduError(
                f"{self.root}: no labels: expected {self.root / 'labels'}/ with label rasters "
                f"named like the images, or one of {', '.join(VECTOR_NAMES)}"
            )
        return None

    def _label_for(self, image: Path) -> Path:
        for suffix in (image.suffix, *IMAGE_SUFFIXES):
            cand = self.root / "labels" / f"{image.stem}{suffix}"
            if cand.is_file():
                return cand
        raise GeodduError(f"{image}: no label raster {self.root / 'labels' / image.name}")

    def _class_index(self, name: Any, what: str) -> int:
        if name is None:
            return IGNORE
        for k, c in enumerate(self.spec["classes"]):
            if str(name) in (c["name"], str(c.get("value", c["name"]))):
                return k
        raise GeodduError(f"classes file: {what} {name!r} is not one of the classes")

    def _raster_lut(self) -> np.ndarray:
        """Label raster value -> class id (values with no class are ignored)."""
        lut = np.full(65536, IGNORE, np.uint8)
        for k, c in enumerate(self.spec["classes"]):
            value = c.get("value", k)
            if not isinstance(value, int) or not 0 <= value < 65536:
                raise GeodduError(
                    f"class {c['name']!r}: label raster values must be integers 0-65535"
                )
            lut[value] = k
        return lut

    def _check_image(self, src: RasterSource, n: int, bands: list[int] | None) -> None:
        if bands and max(bands) > src.count:
            raise GeodduError(f"{src.path}: has {src.count} bands, --bands asks for {max(bands)}")
        if self.labels is not None:
            with open_raster(self.labels[n]) as lab:
                if (lab.height, lab.width) != (src.height, src.width):
                    raise GeodduError(
                        f"{lab.path}: {lab.width} x {lab.height} px, but its image is "
                        f"{src.width} x {src.height}"
                    )
                if lab.dtype.kind not in "iu":
                    raise GeodduError(f"{lab.path}: label rasters must hold integer class ids")
        else:
            gdf = read_vector_labels(self.vector, self.class_column, src.crs)
            values = {str(v) for v in gdf[self.class_column].unique()}
            unknown = sorted(values - set(self.class_ids))
            if unknown:
                raise GeodduError(
                    f"{self.vector}: {self.class_column} values {', '.join(unknown[:5])} match no "
                    f"class; give each class its `value` in the classes file"
                )

    # -- reading ------------------------------------------------------------------------------
    def _source(self, path: Path, bands: list[int] | None) -> RasterSource:
        key = str(path)
        if key not in self._handles:
            self._handles[key] = open_raster(path, bands=bands)
        return self._handles[key]

    def __getstate__(self) -> dict[str, Any]:
        # Open handles are per process: DataLoader workers open their own.
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def read_patch(self, item: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw image, valid mask and class ids of one patch."""
        n, r, c = item
        p = self.patch_size
        src = self._source(self.image_paths[n], self.bands)
        image, valid = src.read_with_mask(r, c, p, p)
        if self.labels is not None:
            lab = self._source(self.labels[n], [1])
            raw, lab_valid = lab.read_with_mask(r, c, p, p)
            values = raw[0].astype(np.int64)
            inside = (values >= 0) & (values < len(self.lut))
            labels = self.lut[np.where(inside, values, 0)]
            labels[~(lab_valid & inside)] = IGNORE
        else:
            transform = src.transform * Affine.translation(c, r)
            labels = rasterize_labels(self.vector, self.class_column, transform, (p, p), src.crs,
                                      self.class_ids, fill=self.fill)
        labels = labels.copy()
        labels[~valid] = IGNORE
        return image.astype(np.float32), valid, labels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, valid, labels = self.read_patch(self.items[index])
        mean = np.asarray(self.normalization["mean"], np.float32)[:, None, None]
        # Invalid pixels become the band mean: 0 after normalisation, the predictor's nodata rule.
        image = np.where(valid[None], image, mean).astype(np.float32)
        return image, labels.astype(np.int64)

    def _normalization(self) -> dict[str, list[float]]:
        with open_raster(self.image_paths[0], bands=self.bands) as src:
            if src.dtype == np.uint8:
                return uint8_normalization(len(self.bands))
        # Other data types: per-band mean and std of valid pixels in a few training patches,
        # picked the same way whatever split is being built.
        train = self.split_patches["train"] or self.patches
        pick = np.random.default_rng(self.seed).permutation(len(train))[:NORM_SAMPLES]
        sums = np.zeros(len(self.bands))
        sq = np.zeros(len(self.bands))
        low = np.full(len(self.bands), np.inf)
        high = np.full(len(self.bands), -np.inf)
        n = 0
        for i in sorted(pick):
            image, valid, _ = self.read_patch(train[i])
            v = image[:, valid].astype(np.float64)
            sums += v.sum(1)
            sq += (v**2).sum(1)
            n += v.shape[1]
            if v.shape[1]:
                low, high = np.minimum(low, v.min(1)), np.maximum(high, v.max(1))
        if n and np.isfinite(low).all() and np.isfinite(high).all():
            self.sampled_range = [[float(a), float(b)] for a, b in zip(low, high, strict=True)]
        if n == 0:
            return {"mean": [0.0] * len(self.bands), "std": [1.0] * len(self.bands)}
        mean = sums / n
        std = np.sqrt(np.maximum(sq / n - mean**2, 0))
        return {"mean": mean.tolist(), "std": np.where(std > 0, std, 1.0).tolist()}

    def describe(self) -> dict[str, Any]:
        return {**self.split_record(), "class_column": self.class_column,
                "classes_file": self.classes_file, "bands": self.bands}

    def data_description(self) -> dict[str, Any]:
        if self.sampled_range is not None:  # the patches the normalisation was measured on
            return data_record(self.pixel_size, self.pixel_units, self.dtype,
                               self.sampled_range, "sample")
        return data_record(self.pixel_size, self.pixel_units, self.dtype,
                           dtype_range(self.dtype, len(self.bands)), "dtype")
