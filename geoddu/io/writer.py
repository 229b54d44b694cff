"""Atomic, tiled, georeferenced GeoTIFF outputs.

Every output is written to a hidden temporary file next to the destination (same filesystem,
so the final ``os.replace`` is atomic) and only renamed over the destination once it is
complete: overviews built, if asked converted to a Cloud-Optimised GeoTIFF, GDAL's errors at
close checked, and every block read back. A crash, an exception or Ctrl-C leaves the destination
exactly as it was and removes the temporary file. :meth:`finish` and :meth:`commit` are separate
steps so that a run with several outputs renames them only once all are whole.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geoddu.errors import GeodduError, first_line

from .atomic import TEMP_MARKER, AtomicOutput, commit_all, os_error_line, sidecar_of
from .gdal_errors import gdal_checked, verify_readable

__all__ = [
    "TEMP_MARKER",
    "AtomicOutput",
    "ClassMapWriter",
    "FloatRasterWriter",
    "UInt8RasterWriter",
    "class_map_pam_xml",
    "commit_all",
    "overview_factors",
    "probability_writer",
]

TILE = 512
CLASS_NODATA = 255
# uint8 probabilities: p is stored as round(p * 254), 255 is nodata; GDAL's scale says so.
PROBABILITY_DTYPES = ("float32", "uint8")
UINT8_NODATA = 255
UINT8_STEPS = 254
# DEFLATE's level: 3 rather than GDAL's 6 compresses a class map 2.5-3.5x faster for a file
# 6% larger (benchmarks/writer_tail.py); the compression sits on the run's serial tail.
ZLEVEL = 3


def gdal_threads() -> str:
    """GDAL's NUM_THREADS for compression and overviews: the cores this process may use. The
    finish is the run's tail, when the model's threads are idle."""
    try:
        return str(len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return str(os.cpu_count() or 1)

# GDAL's raster attribute table codes (gdal.h): GDALRATFieldType and GDALRATFieldUsage.
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE, _GFU_ALPHA = 2, 5, 6, 7, 8, 9
RAT_COLUMNS = (
    ("Value", _GFT_INTEGER, _GFU_MINMAX),
    ("Class_Name", _GFT_STRING, _GFU_NAME),
    ("Red", _GFT_INTEGER, _GFU_RED),
    ("Green", _GFT_INTEGER, _GFU_GREEN),
    ("Blue", _GFT_INTEGER, _GFU_BLUE),
    ("Alpha", _GFT_INTEGER, _GFU_ALPHA),
)


def class_map_pam_xml(
    class_names: Sequence[str], class_colors: Sequence[tuple[int, int, int]]
) -> bytes:
    """GDAL's PAM sidecar (``NAME.aux.xml``) for a class map: band 1's category names and a
    thematic raster attribute table (value, name, red, green, blue, alpha), as GDAL itself
    writes them. Value ``i`` is class ``i``; nodata (255) has neither a category nor a row."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    categories = ET.SubElement(band, "CategoryNames")
    for name in class_names:
        ET.SubElement(categories, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    for index, (name, kind, usage) in enumerate(RAT_COLUMNS):
        defn = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(defn, "Name").text = name
        ET.SubElement(defn, "Type").text = str(kind)
        ET.SubElement(defn, "Usage").text = str(usage)
    for value, (name, color) in enumerate(zip(class_names, class_colors, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(value))
        for field in (value, name, *color, 255):
            ET.SubElement(row, "F").text = str(field)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"


@contextmanager
def _quiet() -> Iterator[None]:
    # Outputs of non-georeferenced inputs (microscopy) are legitimately in pixel space; GDAL's
    # "no geotransform" warning would only confuse users.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def overview_factors(width: int, height: int, smallest: int = 256) -> list[int]:
    """Factors 2, 4, 8... down to the last level whose longer side is still >= ``smallest``."""
    factors = []
    factor = 2
    while math.ceil(max(width, height) / factor) >= smallest:
        factors.append(factor)
        factor *= 2
    return factors


class _TiledWriter:
    """Shared machinery: a tiled DEFLATE GeoTIFF written window by window, then committed."""

    _dtype: str
    _nodata: float
    _predictor: int
    _resampling: Resampling

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        count: int,
        crs: Any,
        transform: Affine | None,
        overwrite: bool,
        cog: bool,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"output size must be positive, got {width}x{height}")
        self.path = Path(os.fspath(path))
        self.width = int(width)
        self.height = int(height)
        self.count = count
        self.cog = cog
        self._out = AtomicOutput(path, overwrite=overwrite)
        # For a COG the tiled GeoTIFF is only an intermediate; the COG driver writes the
        # final layout (overviews before data, ghost header) in a single copy.
        self._gtiff = self._out.scratch() if cog else self._out.temp
        georef: dict[str, Any] = {}
        if crs is not None:
            georef["crs"] = crs
        if transform is not None and (crs is not None or not transform.is_identity):
            georef["transform"] = transform
        try:
            with _quiet():
                self._ds = rasterio.open(
                    self._gtiff,
                    "w",
                    driver="GTiff",
                    width=self.width,
                    height=self.height,
                    count=count,
                    dtype=self._dtype,
                    nodata=self._nodata,
                    tiled=True,
                    blockxsize=TILE,
                    blockysize=TILE,
                    compress="deflate",
                    zlevel=ZLEVEL,
                    num_threads=gdal_threads(),
                    predictor=self._predictor,
                    bigtiff="IF_SAFER",
                    **georef,
                )
        except (RasterioError, OSError) as exc:
            self._out.discard()
            raise GeodduError(f"{self.path}: cannot create output: {first_line(exc)}") from exc
        self._finished = False

    def _clip(
        self, array: np.ndarray, row_off: int, col_off: int
    ) -> tuple[np.ndarray, Window] | None:
        if self._finished:
            raise ValueError(f"{self.path}: write after the writer was closed or aborted")
        row_off, col_off = int(row_off), int(col_off)
        h, w = array.shape[-2:]
        r0, r1 = max(row_off, 0), min(row_off + h, self.height)
        c0, c1 = max(col_off, 0), min(col_off + w, self.width)
        if r0 >= r1 or c0 >= c1:
            return None
        part = array[..., r0 - row_off : r1 - row_off, c0 - col_off : c1 - col_off]
        return part, Window(c0, r0, c1 - c0, r1 - r0)

    def _write(self, array: np.ndarray, row_off: int, col_off: int) -> None:
        clipped = self._clip(array, row_off, col_off)
        if clipped is None:
            return
        part, window = clipped
        try:
            with gdal_checked(self.path, self._gtiff):
                self._ds.write(np.ascontiguousarray(part), window=window)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> None:
        """Close the dataset, build overviews, convert to COG if asked, and read it all back.

        Nothing is at the destination yet: :meth:`commit` moves it there.
        """
        if self._finished:
            return
        self._finished = True
        try:
            with _quiet(), rasterio.Env(GDAL_NUM_THREADS=gdal_threads()):
                factors = overview_factors(self.width, self.height)
                with gdal_checked(self.path, self._gtiff):
                    self._ds.close()
                if factors:
                    # Built on the reopened file: in the dataset still open for writing, GDAL
                    # does not yet see the colour table on the overview bands and warns.
                    with gdal_checked(self.path, self._gtiff), \
                            rasterio.open(self._gtiff, "r+") as ds:
                        ds.build_overviews(factors, self._resampling)
                        ds.update_tags(ns="rio_overview", resampling=self._resampling.name)
                if self.cog:
                    with gdal_checked(self.path, self._out.temp):
                        rasterio.shutil.copy(
                            self._gtiff,
                            self._out.temp,
                            driver="COG",
                            BLOCKSIZE=TILE,
                            COMPRESS="DEFLATE",
                            LEVEL=ZLEVEL,
                            NUM_THREADS=gdal_threads(),
                            PREDICTOR="YES",
                            BIGTIFF="IF_SAFER",
                            # The overviews built above are reused; RESAMPLING only matters if
                            # the driver decides to add levels of its own.
                            OVERVIEWS="AUTO",
                            RESAMPLING=self._resampling.name.upper(),
                        )
                self._write_sidecar(self._out.temp)
                verify_readable(self._out.temp, self.path)
        except BaseException:
            self._discard()
            raise

    def _write_sidecar(self, temp: Path) -> None:
        """Write what GDAL keeps beside the file (its PAM ``.aux.xml``); none by default."""

    @property
    def finished_path(self) -> Path:
        """The finished (not yet committed) file, for steps that read the output first."""
        return self._out.temp

    @property
    def output(self) -> AtomicOutput:
        return self._out

    def commit(self) -> None:
        """Move the finished file to the destination."""
        self._out.commit()

    def close(self) -> None:
        """:meth:`finish`, then :meth:`commit`."""
        if self._out.done:
            return
        self.finish()
        self.commit()

    def _discard(self) -> None:
        try:
            # Closing flushes cached tiles, which fails again on a full disk; the temporary
            # file goes anyway, and the error that brought us here is the one to report.
            with gdal_checked(self.path, self._gtiff):
                self._ds.close()
        except GeodduError:
            pass
        finally:
            self._out.discard()

    def abort(self) -> None:
        """Stop writing and delete the temporary file; the destination is left untouched."""
        self._finished = True
        self._discard()

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class ClassMapWriter(_TiledWriter):
    """Single-band uint8 class map: nodata 255, colour table and class names.

    Class ``i`` is drawn in ``class_colors[i]``; 255 (no prediction) is transparent. Class
    names are stored as dataset tags ``CLASS_NAMES`` (a JSON list) and ``CLASS_0``,
    ``CLASS_1``..., and in GDAL's PAM sidecar ``NAME.aux.xml`` as band 1's category names and a
    thematic raster attribute table (what QGIS and ArcGIS show as the legend). Overviews use
    mode resampling so they stay valid classes.
    """

    _dtype = "uint8"
    _nodata = CLASS_NODATA
    _predictor = 2
    _resampling = Resampling.mode

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        crs: Any,
        transform: Affine | None,
        class_names: Sequence[str],
        class_colors: Sequence[tuple[int, int, int]],
        overwrite: bool = False,
        cog: bool = False,
    ) -> None:
        names = [str(n) for n in class_names]
        colors = [tuple(int(v) for v in c) for c in class_colors]
        if not names:
            raise GeodduError("a class map needs at least one class name")
        if len(names) > CLASS_NODATA:
            raise GeodduError(f"{len(names)} classes do not fit a uint8 map with 255 as nodata")
        if len(colors) != len(names):
            raise GeodduError(f"{len(names)} class names but {len(colors)} class colours")
        for name, color in zip(names, colors, strict=True):
            if len(color) != 3 or not all(0 <= v <= 255 for v in color):
                raise GeodduError(f"class {name!r}: colour {color} is not an RGB triple 0-255")
        self.class_names = names
        self.class_colors = colors
        super().__init__(
            path,
            width=width,
            height=height,
            count=1,
            crs=crs,
            transform=transform,
            overwrite=overwrite,
            cog=cog,
        )
        try:
            colormap = {i: (*c, 255) for i, c in enumerate(colors)}
            colormap[CLASS_NODATA] = (0, 0, 0, 0)
            self._ds.write_colormap(1, colormap)
            self._ds.update_tags(
                CLASS_NAMES=json.dumps(names),
                **{f"CLASS_{i}": name for i, name in enumerate(names)},
            )
            self._ds.set_band_description(1, "class")
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ClassMapWriter:
        return self

    def _write_sidecar(self, temp: Path) -> None:
        # GeoTIFF has no place for category names or an attribute table: GDAL keeps them in
        # the PAM sidecar, which the commit renames along with the file.
        try:
            sidecar_of(temp).write_bytes(class_map_pam_xml(self.class_names, self.class_colors))
        except OSError as exc:
            raise GeodduError(os_error_line(exc, str(self.path))) from exc

    def write(self, array: np.ndarray, row_off: int, col_off: int) -> None:
        """Write class indices (h, w) at (row_off, col_off); parts off the image are dropped."""
        array = np.asarray(array)
        if array.ndim != 2:
            raise ValueError(f"class map window must be (h, w), got shape {array.shape}")
        if array.dtype != np.uint8:
            if array.dtype.kind not in "iu":
                raise TypeError(f"class map window must be integers, got {array.dtype}")
            if array.size and (array.min() < 0 or array.max() > 255):
                raise ValueError("class map values must be in 0..255")
            array = array.astype(np.uint8)
        self._write(array[np.newaxis], row_off, col_off)


class FloatRasterWriter(_TiledWriter):
    """float32 multi-band raster (per-class probabilities, confidence), nodata NaN.

    Each band's description is its name in ``band_descriptions``. Overviews average.
    """

    _dtype = "float32"
    _nodata = float("nan")
    _predictor = 3  # floating-point predictor: DEFLATE compresses floats far better with it
    _resampling = Resampling.average

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        width: int,
        height: int,
        crs: Any,
        transform: Affine | None,
        band_descriptions: Sequence[str],
        overwrite: bool = False,
        cog: bool = False,
    ) -> None:
        names = [str(n) for n in band_descriptions]
        if not names:
            raise GeodduError("a float raster needs at least one band name")
        self.band_descriptions = names
        super().__init__(
            path,
            width=width,
            height=height,
            count=len(names),
            crs=crs,
            transform=transform,
            overwrite=overwrite,
            cog=cog,
        )
        try:
            for i, name in enumerate(names, start=1):
                self._ds.set_band_description(i, name)
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> FloatRasterWriter:
        return self

    def _bands(self, array: np.ndarray) -> np.ndarray:
        """A float32 (bands, h, w) window; a single band may come as (h, w)."""
        array = np.asarray(array, dtype=np.float32)
        if array.ndim == 2 and self.count == 1:
            array = array[np.newaxis]
        if array.ndim != 3 or array.shape[0] != self.count:
            raise ValueError(f"expected a ({self.count}, h, w) window, got shape {array.shape}")
        return array

    def write(self, array: np.ndarray, row_off: int, col_off: int) -> None:
        """Write (bands, h, w) at (row_off, col_off); a single band may be given as (h, w)."""
        array = self._bands(array)
        self._write(array, row_off, col_off)


class UInt8RasterWriter(FloatRasterWriter):
    """Probabilities in 0..1 as uint8, 4x smaller than float32: ``p`` is stored as
    ``round(p * 254)``, NaN as 255 (nodata). Every band carries GDAL's scale ``1/254`` (offset
    0), so GDAL-aware tools read probabilities back (``value * scale + offset``).
    """

    _dtype = "uint8"
    _nodata = UINT8_NODATA
    _predictor = 2
    _resampling = Resampling.average
    scale = 1.0 / UINT8_STEPS

    def __init__(self, path: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        try:
            self._ds.scales = (self.scale,) * self.count
            self._ds.offsets = (0.0,) * self.count
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> UInt8RasterWriter:
        return self

    def write(self, array: np.ndarray, row_off: int, col_off: int) -> None:
        """Write probabilities (bands, h, w) (float, NaN for nodata) at (row_off, col_off)."""
        array = self._bands(array)
        nodata = np.isnan(array)
        scaled = np.rint(np.clip(np.nan_to_num(array), 0.0, 1.0) * UINT8_STEPS)
        out = scaled.astype(np.uint8)
        out[nodata] = UINT8_NODATA
        self._write(out, row_off, col_off)


def probability_writer(
    path: str | os.PathLike[str], *, dtype: str = "float32", **kwargs: Any
) -> FloatRasterWriter:
    """The writer for probabilities or confidence in ``dtype`` (``float32`` or ``uint8``)."""
    if dtype == "float32":
        return FloatRasterWriter(path, **kwargs)
    if dtype == "uint8":
        return UInt8RasterWriter(path, **kwargs)
    raise GeodduError(
        f"unknown probabilities dtype {dtype!r}; choose from {', '.join(PROBABILITY_DTYPES)}"
    )
