"""Bands kept in separate files (one Cloud-Optimised GeoTIFF per band, as Sentinel-2 and Landsat
come) as one scene: a GDAL VRT with one band per file, in the order given.

* **Grid**: the first file's CRS, transform and size. Every other file must be in the same CRS
  and cover the first one's extent; one at another resolution or offset is resampled onto the
  grid by GDAL itself (a VRT source whose SrcRect/DstRect scale it, with ``resampling=``), so
  reading a window of the stack is GDAL's resampled read of that file.
* **Which band**: band 1 of each file (the only one of a single-band file).
* **Nodata**: each VRT band keeps its file's nodata value, or its file's mask (internal,
  ``.msk`` or alpha) as the band's mask. The stack's validity is then GDAL's dataset mask of
  the VRT, as for any multi-band file: a pixel is nodata where *every* band is nodata (the
  edge of a Sentinel-2 tile, 0 in every band); nodata in one band alone leaves the pixel valid
  and the model sees that band's stored value, as (0, 5, 5) under nodata 0 is data in one
  file. GDAL's resampling leaves a file's nodata pixels out of the kernel.

The VRT names its files with absolute paths, so it can live anywhere: in the output's private
temporary folder during a run (:func:`band_stack`), or in GDAL's memory for a plan that
writes nothing. No torch here.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from geoddu.errors import GeodduError

from .vrt_file import vrt_file

__all__ = [
    "DEFAULT_RESAMPLING",
    "RESAMPLINGS",
    "BandFile",
    "BandRef",
    "band_stack",
    "gdal_path",
    "read_band_file",
    "stack_vrt",
]

# GDAL's resampling methods for a band read at another resolution (RasterIO's, which a VRT
# source applies). Bilinear by default: reflectances are continuous, so nearest would paint
# 2x2 blocks of a 20 m band onto the 10 m grid (edges the model never saw in training), and
# cubic/lanczos overshoot at sharp edges (values outside the band's real range, negative
# reflectances clipped to 0). Bilinear is also what torchgeo's RasterDataset reads image
# bands with, so a model trained through it saw the same thing. Use nearest for classes/QA.
# Each of these gives a window of the stack exactly as the same pixels of a whole read
# (tests/io/test_band_stack.py), so the engine's windows change nothing; GDAL's "average" does
# not when it up-samples (its kernel follows the window read), so it is not offered.
RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "mode")
DEFAULT_RESAMPLING = "bilinear"

# How far (in pixels of the first band) a band's extent may fall short of the first band's
# and how far from it a grid may be to count as the same: float rounding in the transforms.
_TOLERANCE_PX = 1e-3
_SCHEMES = {"http": "/vsicurl/", "https": "/vsicurl/", "s3": "/vsis3/", "gs": "/vsigs/",
            "az": "/vsiaz/"}


@dataclass(frozen=True)
class BandRef:
    """One band to stack: ``path`` as given (a path, a URL, a GDAL path), and ``asset``, the
    key of the STAC asset it came from (None: from ``--band-files``)."""

    path: str
    asset: str | None = None

    @property
    def what(self) -> str:
        """The band as messages name it: where the user gave it."""
        if self.asset is None:
            return f"--band-files {self.path}"
        return f"STAC asset {self.asset!r} ({self.path})"

    @property
    def description(self) -> str:
        """The VRT band's description (what ``gdalinfo`` and band lists show)."""
        return self.asset or os.path.basename(urlsplit(self.path).path) or self.path


@dataclass(frozen=True)
class BandFile:
    """Band 1 of one file, as far as stacking it needs: read from its header only."""

    ref: BandRef
    gdal_path: str
    width: int
    height: int
    crs: Any  # rasterio CRS or None
    transform: Any  # affine.Affine
    dtype: str
    nodata: float | None
    # The file's mask (internal, .msk or alpha) stands for band 1's validity: no nodata value.
    has_mask: bool


def gdal_path(href: str) -> str:
    """``href`` as GDAL opens it: http(s) URLs through ``/vsicurl/``, ``s3://`` ``gs://``
    ``az://`` through GDAL's cloud file systems, ``file://`` and other paths made absolute,
    ``/vsi...`` paths as given."""
    scheme, sep, rest = href.partition("://")
    if not sep:
        # The VRT names its files absolutely: it may live elsewhere than the working folder.
        return href if href.startswith("/vsi") else os.path.abspath(href)
    scheme = scheme.lower()
    if scheme == "file":
        from urllib.parse import unquote

        return os.path.abspath(unquote(rest))
    if scheme in ("http", "https"):
        return _SCHEMES[scheme] + href
    if scheme in _SCHEMES:
        return _SCHEMES[scheme] + rest
    raise GeodduError(f"unsupported URL scheme {scheme!r} (http, https, s3, gs, az)")


def _is_local(path: str) -> bool:
    return not path.startswith("/vsi")


def read_band_file(ref: BandRef) -> BandFile:
    """What the stack needs of ``ref``'s file, from its header; a one-line error if GDAL
    cannot open it."""
    import warnings

    import rasterio
    from rasterio.enums import MaskFlags
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    try:
        path = gdal_path(ref.path)
    except GeodduError as exc:
        raise GeodduError(f"{ref.what}: {exc}") from exc
    if _is_local(path):
        if not os.path.exists(path):
            raise GeodduError(f"{ref.what}: no such file")
        if os.path.isdir(path):
            raise GeodduError(f"{ref.what}: is a directory, not a raster")
    try:
        # Files without georeferencing stack by their pixel grids; rasterio would warn.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            ds = rasterio.open(path)
        with ds:
            if ds.count == 0:
                raise GeodduError(f"{ref.what}: raster has no bands")
            flags = ds.mask_flag_enums[0]
            return BandFile(
                ref=ref, gdal_path=path, width=ds.width, height=ds.height, crs=ds.crs,
                transform=ds.transform, dtype=ds.dtypes[0],
                nodata=None if ds.nodata is None else float(ds.nodata),
                has_mask=MaskFlags.nodata not in flags and MaskFlags.all_valid not in flags,
            )
    except RasterioError as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise GeodduError(f"{ref.what}: cannot be read as a raster ({reason})") from exc


def _placement(first: BandFile, band: BandFile) -> tuple[float, float, float, float]:
    """Where ``band``'s whole raster lands on the first band's pixel grid: (x, y, width,
    height) in the first band's pixels; refused unless it covers the first band's extent."""
    t0, t = first.transform, band.transform
    if t0.b or t0.d or t.b or t.d:
        raise GeodduError(
            f"{band.ref.what}: rotated or sheared grids cannot be stacked; "
            "warp the bands to a north-up grid first (gdalwarp)"
        )
    x = (t.c - t0.c) / t0.a
    y = (t.f - t0.f) / t0.e
    w = band.width * t.a / t0.a
    h = band.height * t.e / t0.e
    tol = _TOLERANCE_PX
    if w <= 0 or h <= 0:
        raise GeodduError(
            f"{band.ref.what}: its rows or columns run the other way from the "
            f"first band's ({first.ref.path}); warp it onto the first band's grid first"
        )
    if x > tol or y > tol or x + w < first.width - tol or y + h < first.height - tol:
        raise GeodduError(
            f"{band.ref.what} does not cover the extent of the first band "
            f"({first.ref.path}), whose grid the stack takes; give bands of the same area"
        )
    return x, y, w, h


def _same_grid(first: BandFile, band: BandFile, place: tuple[float, float, float, float]) -> bool:
    """Whether ``band``'s pixels are the first band's: copied as they are, no resampling."""
    x, y, w, h = place
    return (band.width, band.height) == (first.width, first.height) and max(
        abs(x), abs(y), abs(w - first.width), abs(h - first.height)) <= _TOLERANCE_PX


def _num(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _source(parent: ET.Element, kind: str, band: BandFile, source_band: str,
            place: tuple[float, float, float, float] | None, resampling: str) -> None:
    """A VRT source reading ``source_band`` of ``band``'s file, scaled onto ``place``."""
    src = ET.SubElement(parent, kind)
    if place is not None:
        src.set("resampling", resampling)
    # shared="0": every handle on the VRT opens its files itself, so that the reader threads
    # (one handle each) never share a GDAL dataset.
    name = ET.SubElement(src, "SourceFilename", relativeToVRT="0", shared="0")
    name.text = band.gdal_path
    ET.SubElement(src, "SourceBand").text = source_band
    ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(band.width),
                  ySize=str(band.height))
    x, y, w, h = place if place is not None else (0, 0, band.width, band.height)
    ET.SubElement(src, "DstRect", xOff=_num(x), yOff=_num(y), xSize=_num(w), ySize=_num(h))


_VRT_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
              "uint32": "UInt32", "int32": "Int32", "uint64": "UInt64", "int64": "Int64",
              "float32": "Float32", "float64": "Float64", "complex64": "CFloat32",
              "complex128": "CFloat64"}


def stack_vrt(refs: Sequence[BandRef], resampling: str = DEFAULT_RESAMPLING) -> str:
    """The VRT (XML text) stacking band 1 of each of ``refs``, in order, on the first one's
    grid; every file's header is read and checked (CRS, extent, orientation)."""
    if not refs:
        raise GeodduError("no band files given")
    if resampling not in RESAMPLINGS:
        raise GeodduError(f"--band-resampling: unknown {resampling!r}; choose from "
                          f"{', '.join(RESAMPLINGS)}")
    bands = [read_band_file(r) for r in refs]
    first = bands[0]
    for band in bands[1:]:
        if band.crs != first.crs:
            raise GeodduError(
                f"{band.ref.what} is in {_crs_name(band.crs)}, but the first band "
                f"({first.ref.path}), whose grid the stack takes, is in {_crs_name(first.crs)}; "
                f"reproject it first (gdalwarp -t_srs {_crs_name(first.crs)})"
            )
    vrt = ET.Element("VRTDataset", rasterXSize=str(first.width), rasterYSize=str(first.height))
    if first.crs is not None:
        ET.SubElement(vrt, "SRS").text = first.crs.to_wkt()
    t = first.transform
    if not t.is_identity:
        ET.SubElement(vrt, "GeoTransform").text = ", ".join(
            repr(float(v)) for v in (t.c, t.a, t.b, t.f, t.d, t.e))
    for i, band in enumerate(bands, 1):
        place = _placement(first, band)
        scaled = None if _same_grid(first, band, place) else place
        node = ET.SubElement(vrt, "VRTRasterBand", dataType=_VRT_TYPES.get(band.dtype, "Float64"),
                             band=str(i))
        ET.SubElement(node, "Description").text = band.ref.description
        if band.nodata is not None:
            ET.SubElement(node, "NoDataValue").text = (
                "nan" if math.isnan(band.nodata) else repr(band.nodata))
        _source(node, "SimpleSource", band, "1", scaled, resampling)
        if band.has_mask:
            # The file's mask as this band's own: GDAL's dataset mask of the stack is then the
            # union over the bands, as with nodata values. A mask is resampled as a class.
            mask = ET.SubElement(node, "MaskBand")
            mband = ET.SubElement(mask, "VRTRasterBand", dataType="Byte")
            _source(mband, "SimpleSource", band, "mask,1", scaled, "nearest")
    ET.indent(vrt)
    return ET.tostring(vrt, encoding="unicode")


def _crs_name(crs: Any) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


@contextmanager
def band_stack(
    refs: Sequence[BandRef],
    resampling: str = DEFAULT_RESAMPLING,
    *,
    beside: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """The path of a VRT stacking ``refs`` (:func:`stack_vrt`), for as long as the block runs.

    ``beside``: an output path; the VRT goes into that output's private temporary folder
    (``.NAME.geoddu-tmp-PID-RANDOM/bands.vrt``, :class:`geoddu.io.atomic.AtomicOutput`), which
    is removed when the block ends however it ends, and by a later run if this process is
    killed. None: the VRT lives in GDAL's memory (``/vsimem/``) and nothing is written.
    """
    with vrt_file(stack_vrt(refs, resampling), "bands.vrt", beside) as path:
        yield path


