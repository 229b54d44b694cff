"""The two readers behind `geoddu.io.raster.RasterSource`, and which one opens a file.

* **rasterio** (GDAL) for everything GDAL opens: GeoTIFF, COG, JPEG, PNG, VRT, ``/vsicurl/``...
* **tifffile** for plain TIFF / BigTIFF / OME-TIFF without georeferencing (microscopy,
  industrial scans). GDAL sees only the first page of a multi-page OME-TIFF, tifffile sees the
  whole series, so channels stored as pages become bands. Uncompressed contiguous data is read
  through ``tifffile.memmap``; anything else (compressed, tiled) by decoding only the strips or
  tiles a window touches, with tifffile's own per-segment decoder (``TiffPage.decode``). That
  is the mechanism tifffile's zarr store uses internally, so it needs no zarr.

Axes of a tifffile series (after tifffile squeezes length-1 axes): ``Y`` and ``X`` are the image
and *the one other axis*, whatever tifffile calls it (``C`` channels, ``S`` samples as in
``(H, W, 3)`` RGB or planar ``(3, H, W)``, ``I``/``Q`` page stacks, ``Z``, ``T``), becomes the
bands. Two or more non-spatial axes (e.g. a ``TCYX`` time series) are refused as ambiguous.
"""

from __future__ import annotations

import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window

from geoddu.errors import GeodduError

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf2", ".tf8")

# Decoded tiles are kept so that overlapping windows (the usual sliding-window pattern) do not
# decode the same tile again; the budget bounds memory per open handle.
_SEGMENT_CACHE_BYTES = 64 * 1024 * 1024


def _is_local(path: str) -> bool:
    # GDAL virtual file systems and URLs must reach rasterio untouched and cannot be stat'ed.
    return not path.startswith("/vsi") and "://" not in path


def _quiet_open(path: str) -> rasterio.DatasetReader:
    # rasterio warns on every non-georeferenced file; for microscopy that is normal, not news.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)



# The largest block (tile or strip, decoded) geoddu reads from: a single-strip 8192 x 8192 RGB
# image (192 MiB) still opens.
MAX_BLOCK_BYTES = 256 * 2**20


def check_block_size(path: str, rows: int, cols: int, bytes_per_px: int) -> None:
    """Refuse a raster whose one block (a tile or strip, decoded whole) is larger than
    MAX_BLOCK_BYTES, before anything is read. Each window inside it would decode it again (it
    cannot stay in GDAL's 32 MB block cache): a 1 MB file whose one DEFLATE tile inflates to
    2^30 px ran for minutes at 4.9 GB before this check."""
    size = rows * cols * bytes_per_px
    if size > MAX_BLOCK_BYTES:
        raise GeodduError(
            f"{path}: its blocks are {cols}x{rows} px ({size / 2**20:,.0f} MiB decoded, more "
            f"than {MAX_BLOCK_BYTES // 2**20} MiB), and each window read would decode one "
            "again; rewrite it tiled, e.g. gdal_translate -co TILED=YES -co COMPRESS=DEFLATE "
            "in.tif out.tif"
        )

class _UnsupportedLayout(GeodduError):
    """tifffile read the file but its axes do not map onto (bands, Y, X).

    GDAL would show only the first page of such a stack, so falling back to it would silently
    segment the wrong image: this error is raised instead of trying rasterio.
    """


def _check_uncompressed_size(path: str, ds: rasterio.DatasetReader) -> None:
    """An uncompressed GeoTIFF must be as large as the pixels it claims. A fuzzed header of 40
    x 67,108,904 px in a 1 KB file was opened by GDAL (which splits such a strip into one-row
    blocks), planned as 4 million subimages and read for 35 s at 2.9 GB before failing."""
    if ds.driver != "GTiff" or ds.compression is not None or not os.path.isfile(path):
        return
    if ds.block_shapes[0][1] != ds.width:
        return  # tiled: GDAL's SPARSE_OK files may leave unwritten tiles out on purpose
    claimed = ds.width * ds.height * sum(np.dtype(t).itemsize for t in ds.dtypes)
    size = os.path.getsize(path)
    if claimed > 64 * size + 2**20:
        ds.close()
        raise GeodduError(
            f"{path}: damaged TIFF: it claims {ds.width} x {ds.height} px of uncompressed data "
            f"({claimed / 2**30:,.1f} GiB) in a file of {size:,} bytes"
        )


class RasterioBackend:
    name = "rasterio"

    def __init__(self, path: str, ds: rasterio.DatasetReader) -> None:
        self.path = path
        self.ds = ds
        if ds.count == 0:
            subs = ", ".join(ds.subdatasets[:3])
            ds.close()
            hint = f"; open one of its subdatasets, e.g. {subs}" if subs else ""
            raise GeodduError(f"{path}: raster has no bands{hint}")
        self.width = ds.width
        self.height = ds.height
        self.total_bands = ds.count
        _check_uncompressed_size(path, ds)
        self.crs = ds.crs
        self.transform = ds.transform
        self.nodata = None if ds.nodata is None else float(ds.nodata)
        interp = [c.name for c in ds.colorinterp]
        self.alpha_bands = tuple(b for b, c in enumerate(interp, 1) if c == "alpha")
        self._fourth_band_is_data = (
            ds.count == 4
            and interp[0] == "red"
            and interp[3] != "alpha"
            and MaskFlags.per_dataset not in ds.mask_flag_enums[0]
        )
        # GDAL's dataset mask of a file without nodata, mask or alpha is all valid: no need to
        # have GDAL build it window by window.
        self._all_valid = all(f == [MaskFlags.all_valid] for f in ds.mask_flag_enums)
        # GDAL gives every band a colour interpretation; "gray" and "undefined" are its
        # defaults, not something the file says about the band, so they name nothing.
        self.band_names = tuple(
            d or (c if c not in ("gray", "undefined") else None)
            for d, c in zip(ds.descriptions, interp, strict=True)
        )

    def dtype(self, bands: Sequence[int]) -> np.dtype:
        return np.result_type(*(np.dtype(self.ds.dtypes[b - 1]) for b in bands))

    def block_shape(self, bands: Sequence[int]) -> tuple[int, int]:
        rows, cols = self.ds.block_shapes[bands[0] - 1]
        return int(rows), int(cols)

    def read(self, bands: Sequence[int], row: int, col: int, h: int, w: int) -> np.ndarray:
        try:
            return self.ds.read(
                list(bands), window=Window(col, row, w, h), out_dtype=self.dtype(bands)
            )
        except RasterioError as exc:
            raise GeodduError(f"{self.path}: read failed at row {row}, col {col}: {exc}") from exc

    def read_valid(self, bands: Sequence[int], row: int, col: int, h: int, w: int) -> np.ndarray:
        # GDAL's dataset mask: an internal/external mask or an alpha band as is, otherwise
        # nodata only where every band is nodata. Per-band masks would turn real pixels such
        # as (0, 5, 5) under nodata 0 into holes. It is a property of the dataset, so it does
        # not depend on which bands are selected.
        if self._all_valid:
            return np.ones((h, w), bool)
        window = Window(col, row, w, h)
        try:
            if self._fourth_band_is_data:
                # rasterio takes band 4 of a red-first 4-band file for alpha; when GDAL says it
                # is not (RGB + NIR), that would make the NIR band alone decide validity.
                return (self.ds.read_masks(window=window) != 0).any(axis=0)
            return self.ds.dataset_mask(window=window) != 0
        except RasterioError as exc:
            raise GeodduError(f"{self.path}: read failed at row {row}, col {col}: {exc}") from exc

    def close(self) -> None:
        self.ds.close()


class TiffBackend:
    """A tifffile series seen as (bands, rows, cols), read window by window."""

    def __init__(self, path: str) -> None:
        self.path = path
        import tifffile  # here, not at import: it costs 76 ms of every run's start-up

        self.tif = tifffile.TiffFile(path)
        try:
            self._setup()
        except BaseException:
            self.tif.close()
            raise

    def _setup(self) -> None:
        series = self.tif.series[0]
        axes = series.axes
        shape = tuple(series.shape)
        if "Y" not in axes or "X" not in axes:
            raise _UnsupportedLayout(
                f"{self.path}: TIFF series has axes {axes}, no Y/X image plane"
            )
        extra = [i for i, a in enumerate(axes) if a not in "YX"]
        if len(extra) > 1:
            raise _UnsupportedLayout(
                f"{self.path}: TIFF series has axes {axes} {shape}; only Y, X and one band "
                "axis (e.g. C or S) are supported"
            )
        self.height = int(shape[axes.index("Y")])
        self.width = int(shape[axes.index("X")])
        self.total_bands = int(shape[extra[0]]) if extra else 1
        self.alpha_bands: tuple[int, ...] = ()
        self.band_names: tuple[str | None, ...] = (None,) * self.total_bands
        self.dtype_ = np.dtype(series.dtype)
        key = series.keyframe
        if key.is_tiled:
            self._block = (int(key.tilelength), int(key.tilewidth))
        else:
            self._block = (min(int(key.rowsperstrip) or self.height, self.height), self.width)

        import tifffile

        self._array: np.ndarray | None = None
        try:
            mm = tifffile.memmap(self.path, series=0, mode="r")
        except (ValueError, OSError, tifffile.TiffFileError):  # compressed, tiled, ...
            mm = None
        if mm is not None and tuple(mm.shape) == shape:
            # A view reordered to (bands, Y, X): slicing it touches only the pages it needs.
            if extra:
                view = np.moveaxis(mm, [extra[0], axes.index("Y"), axes.index("X")], [0, 1, 2])
            else:
                view = mm.reshape(1, self.height, self.width)
            self._array = view
            self.name = "tifffile-memmap"
            return

        self.name = "tifffile-segments"
        # Map each band to (page, sample): bands come either from pages (one 2-D image per
        # channel, typical OME) or from the samples of a single page (RGB, planar), never both,
        # because more than one non-spatial axis was refused above.
        self.pages = list(series.pages)
        sep, depth, _, _, contig = key.shaped
        if depth != 1:
            raise _UnsupportedLayout(
                f"{self.path}: volumetric TIFF tiles (ImageDepth) are not supported"
            )
        nsamples = sep * contig
        if len(self.pages) * nsamples != self.total_bands:
            raise _UnsupportedLayout(
                f"{self.path}: TIFF series {axes} {shape} does not map onto its pages"
            )
        self._band_page_sample = [(b // nsamples, b % nsamples) for b in range(self.total_bands)]
        self._planar = sep > 1
        th, tw = self._block
        self._tiles_down = math.ceil(self.height / th)
        self._tiles_across = math.ceil(self.width / tw)
        # A damaged file can list fewer offsets or byte counts than its size needs (found by
        # fuzzing: an IndexError deep in a read); say so at open.
        need = self._tiles_down * self._tiles_across * sep
        for i, page in enumerate(self.pages):
            if page is not None and min(len(page.dataoffsets), len(page.databytecounts)) < need:
                raise GeodduError(
                    f"{self.path}: damaged TIFF: page {i} lists "
                    f"{min(len(page.dataoffsets), len(page.databytecounts))} data segments, its "
                    f"size needs {need}"
                )
        self._cache: OrderedDict[tuple[int, int], np.ndarray | None] = OrderedDict()
        self._cache_bytes = 0
        check_block_size(self.path, th, tw, self.dtype_.itemsize * nsamples)
        # Decode one segment now: a compression tifffile cannot decode (e.g. JPEG-XL without
        # imagecodecs) should fail at open, where another backend can still take over.
        self._segment(0, 0)

    def dtype(self, bands: Sequence[int]) -> np.dtype:
        return self.dtype_

    def block_shape(self, bands: Sequence[int]) -> tuple[int, int]:
        return self._block

    def _segment(self, page_index: int, seg_index: int) -> np.ndarray | None:
        """Decoded segment as (rows, cols, samples), or None for a sparse (absent) one."""
        key = (page_index, seg_index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        page = self.pages[page_index]
        if page is None:
            seg = None
        else:
            offset = page.dataoffsets[seg_index]
            count = page.databytecounts[seg_index]
            if not offset or not count:
                seg = None
            else:
                fh = self.tif.filehandle
                fh.seek(offset)
                data = fh.read(count)
                keyframe = page.keyframe
                kwargs: dict[str, Any] = {}
                if keyframe.compression in {6, 7, 34892, 33007}:  # JPEG flavours
                    kwargs = {"jpegtables": page.jpegtables, "jpegheader": keyframe.jpegheader}
                try:
                    decoded, _, _ = keyframe.decode(data, seg_index, **kwargs)
                except Exception as exc:  # codec errors come in many types
                    raise GeodduError(
                        f"{self.path}: cannot decode TIFF segment {seg_index} of page "
                        f"{page_index}: {exc}"
                    ) from exc
                seg = None if decoded is None else decoded[0]
        self._cache[key] = seg
        self._cache_bytes += 0 if seg is None else seg.nbytes
        while self._cache_bytes > _SEGMENT_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= 0 if old is None else old.nbytes
        return seg

    def read(self, bands: Sequence[int], row: int, col: int, h: int, w: int) -> np.ndarray:
        if self._array is not None:
            idx = [b - 1 for b in bands]
            return np.array(self._array[idx, row : row + h, col : col + w], dtype=self.dtype_)
        out = np.zeros((len(bands), h, w), dtype=self.dtype_)
        th, tw = self._block
        per_plane = self._tiles_down * self._tiles_across
        for i, band in enumerate(bands):
            page_index, sample = self._band_page_sample[band - 1]
            plane = sample if self._planar else 0
            channel = 0 if self._planar else sample
            for ty in range(row // th, (row + h - 1) // th + 1):
                for tx in range(col // tw, (col + w - 1) // tw + 1):
                    seg_index = plane * per_plane + ty * self._tiles_across + tx
                    seg = self._segment(page_index, seg_index)
                    if seg is None:
                        continue
                    y0, x0 = ty * th, tx * tw
                    # Edge segments may be cropped (last strip) or padded (edge tiles).
                    r0, r1 = max(row, y0), min(row + h, y0 + seg.shape[0], self.height)
                    c0, c1 = max(col, x0), min(col + w, x0 + seg.shape[1], self.width)
                    if r0 >= r1 or c0 >= c1:
                        continue
                    out[i, r0 - row : r1 - row, c0 - col : c1 - col] = seg[
                        r0 - y0 : r1 - y0, c0 - x0 : c1 - x0, channel
                    ]
        return out

    def read_valid(self, bands: Sequence[int], row: int, col: int, h: int, w: int) -> np.ndarray:
        return np.ones((h, w), dtype=bool)

    def close(self) -> None:
        self._array = None  # drops the memmap so the OS can unmap it
        if hasattr(self, "_cache"):
            self._cache.clear()
        self.tif.close()


def _is_georeferenced(ds: rasterio.DatasetReader) -> bool:
    return (
        ds.crs is not None
        or not ds.transform.is_identity
        or bool(ds.gcps[0])
        or ds.rpcs is not None
    )


def open_backend(path: str, kind: str | None = None) -> RasterioBackend | TiffBackend:
    local = _is_local(path)
    if local:
        if not os.path.exists(path):
            raise GeodduError(f"{path}: no such file")
        if os.path.isdir(path):
            raise GeodduError(f"{path}: is a directory, not a raster")

    if kind == "rasterio":
        return RasterioBackend(path, _quiet_open(path))
    if kind is not None:
        return TiffBackend(path)

    try:
        ds = _quiet_open(path)
    except RasterioError:
        ds = None
    # GDAL wins whenever it has something tifffile would ignore: georeferencing, or a nodata
    # value that the validity mask must honour. Plain .tif files go to tifffile, which sees
    # every page of a multi-page/OME file where GDAL sees only the first.
    if ds is not None and (
        _is_georeferenced(ds)
        or ds.nodata is not None
        or not (local and path.lower().endswith(_TIFF_SUFFIXES))
    ):
        return RasterioBackend(path, ds)

    tiff_problem: str | None = None
    if local:
        try:
            backend = TiffBackend(path)
        except _UnsupportedLayout:
            if ds is not None:
                ds.close()
            raise
        except GeodduError as exc:
            tiff_problem = str(exc)
        except Exception as exc:  # tifffile raises many types for files that are not TIFF
            import tifffile

            if not isinstance(exc, tifffile.TiffFileError):
                tiff_problem = f"{path}: not a raster GDAL can open, and tifffile failed: {exc}"
        else:
            if ds is not None:
                ds.close()
            return backend
    if ds is not None:
        return RasterioBackend(path, ds)
    if tiff_problem:
        raise GeodduError(tiff_problem)
    raise GeodduError(f"{path}: not a raster GDAL or tifffile can open")
