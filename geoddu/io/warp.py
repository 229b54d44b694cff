"""A scene read at another pixel size, and a class map put back on the scene's grid: GDAL's
warper, through warped VRTs, so that both stay windowed.

* :func:`model_grid`: the grid a scene is read on at a model's pixel size: the scene's CRS and
  orientation, pixels of that size, covering the scene's extent and centred on it (it
  overhangs by less than half a pixel on each side, so every pixel's centre lies in the
  scene and GDAL's warper has data for it).
* :func:`warped_vrt` / :func:`warped_scene`: the scene on that grid as a GDAL warped VRT
  (``gdalwarp -of VRT -tr``): GDAL's own serialisation of rasterio's ``WarpedVRT``, so nodata,
  masks and alpha follow GDAL. A scene with nodata keeps it (``UNIFIED_SRC_NODATA``: a pixel is
  nodata where every band is); any other scene gets an alpha band computed by the warper from
  its mask (internal, ``.msk``, alpha, or all valid): the VRT's dataset mask. Reads are
  windowed: the warper computes the VRT's blocks that a window touches, within
  :data:`WARP_MEMORY_BYTES`.
* :func:`regrid_class_map`: a finished class map on the model grid, copied onto the scene's
  own grid by nearest neighbour (classes are labels: no blending), strip by strip.

No torch here; rasterio is imported only when used, so ``geoddu --help`` stays light.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from geoddu.errors import GeodduError, first_line

from .vrt_file import vrt_file

__all__ = [
    "DEFAULT_WARP_RESAMPLING",
    "WARP_RESAMPLINGS",
    "Grid",
    "model_grid",
    "regrid_class_map",
    "warped_scene",
    "warped_vrt",
]

# GDAL's warp kernels (gdalwarp -r). Bilinear by default: imagery is continuous, and bilinear
# neither paints blocks (nearest) nor overshoots at sharp edges (cubic, lanczos: values outside
# the band's real range). When the scene is finer than the model the warper widens every
# kernel to the pixel-size ratio, so bilinear then averages a footprint rather than dropping
# pixels; "average" is the plain mean of the pixels each model pixel covers. nearest and mode
# suit class or QA rasters.
WARP_RESAMPLINGS = ("nearest", "bilinear", "cubic", "cubicspline", "lanczos", "average",
                    "rms", "mode", "min", "max", "med", "q1", "q3", "sum")
DEFAULT_WARP_RESAMPLING = "bilinear"
# GDAL's own default: the warper's working buffers per chunk, whatever the scene's size.
WARP_MEMORY_BYTES = 64 * 2**20
# The VRT's blocks, the unit the warper computes and GDAL's block cache keeps.
BLOCK = 512
# Rows of the scene-grid class map copied at a time by regrid_class_map.
REGRID_ROWS = 512
# Grid sizes are ceil(extent / pixel); float rounding of the extent must not add a column.
_EPS = 1e-9


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size."""

    crs: Any
    transform: Any  # affine.Affine
    width: int
    height: int

    @property
    def pixel_size(self) -> tuple[float, float]:
        return abs(self.transform.a), abs(self.transform.e)

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height,
                "pixel_size": list(self.pixel_size),
                "transform": list(self.transform)[:6]}


def model_grid(scene: Grid, pixel_size: tuple[float, float]) -> Grid:
    """``scene``'s extent at ``pixel_size`` (x, y, map units): same CRS and orientation, as
    many pixels as cover the extent, centred on it. North-up scenes only."""
    from affine import Affine

    t = scene.transform
    if t.b or t.d:
        raise GeodduError("--resample: the scene's grid is rotated or sheared; warp it to a "
                          "north-up grid first (gdalwarp)")
    px, py = (float(v) for v in pixel_size)
    if not (px > 0 and py > 0 and math.isfinite(px) and math.isfinite(py)):
        raise GeodduError(f"--resample: the model's pixel size {px} x {py} is not usable")
    extent_x, extent_y = scene.width * abs(t.a), scene.height * abs(t.e)
    width = max(1, math.ceil(extent_x / px - _EPS))
    height = max(1, math.ceil(extent_y / py - _EPS))
    # Half the overhang on each side, in the scene's axis directions.
    sx, sy = math.copysign(1.0, t.a), math.copysign(1.0, t.e)
    x0 = t.c - sx * (width * px - extent_x) / 2
    y0 = t.f - sy * (height * py - extent_y) / 2
    return Grid(scene.crs, Affine(sx * px, 0.0, x0, 0.0, sy * py, y0), width, height)


def _warp_xml(src: Any, grid: Grid, resampling: str) -> str:
    """GDAL's XML of a warped VRT of the open dataset ``src`` onto ``grid``."""
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    alpha = any(c.name == "alpha" for c in src.colorinterp)
    scale_x = abs(src.transform.a) / abs(grid.transform.a)
    scale_y = abs(src.transform.e) / abs(grid.transform.e)
    with WarpedVRT(
        src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
        resampling=Resampling[resampling],
        # Without nodata the scene's mask (or "all valid") travels as an alpha band: the
        # VRT's dataset mask, invalid only where the warper had no valid source pixel.
        add_alpha=src.nodata is None and not alpha,
        warp_mem_limit=WARP_MEMORY_BYTES // 2**20,
        # The kernel's scale, fixed: GDAL would otherwise derive it per chunk from the chunk's
        # source window, and a pixel's value would depend on which block computed it.
        warp_extras={"XSCALE": repr(scale_x), "YSCALE": repr(scale_y)},
    ) as vrt:
        text = vrt.tags(ns="xml:VRT")["xml:VRT"]
    root = ET.fromstring(text)
    for tag, size in (("BlockXSize", grid.width), ("BlockYSize", grid.height)):
        node = root.find(tag)
        if node is None:
            node = ET.SubElement(root, tag)
        node.text = str(min(BLOCK, size))
    return ET.tostring(root, encoding="unicode")


def warped_vrt(src_path: str, grid: Grid, resampling: str = DEFAULT_WARP_RESAMPLING) -> str:
    """The VRT (XML text) reading the raster ``src_path`` on ``grid`` with GDAL's warper and
    the ``resampling`` kernel; the source is named by ``src_path`` as given."""
    import rasterio
    from rasterio.errors import RasterioError

    if resampling not in WARP_RESAMPLINGS:
        raise GeodduError(f"--resample: unknown {resampling!r}; choose from "
                          f"{', '.join(WARP_RESAMPLINGS)}")
    # The VRT names its source absolutely: it may be opened from another working folder.
    path = os.path.abspath(src_path) if os.path.exists(src_path) else src_path
    try:
        with rasterio.open(path) as src:
            return _warp_xml(src, grid, resampling)
    except (RasterioError, ValueError, KeyError) as exc:
        raise GeodduError(f"{src_path}: cannot be warped to the model's pixel size: "
                          f"{first_line(exc)}") from exc


@contextmanager
def warped_scene(
    src_path: str,
    grid: Grid,
    resampling: str = DEFAULT_WARP_RESAMPLING,
    *,
    beside: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """The path of :func:`warped_vrt` for as long as the block runs.

    ``beside``: an output path; the VRT goes into that output's private temporary folder
    (``.NAME.geoddu-tmp-PID-RANDOM/warped.vrt``), removed when the block ends however it ends
    (and by a later run if this process is killed). Every handle opened on it opens the scene
    itself, so reader threads never share a GDAL dataset. None: in GDAL's memory
    (``/vsimem/``), for a plan that writes nothing or a rank that writes no output.
    """
    with vrt_file(warped_vrt(src_path, grid, resampling), "warped.vrt", beside) as path:
        yield path


def regrid_class_map(
    src: str | os.PathLike[str],
    grid: Grid,
    output: str | os.PathLike[str],
    *,
    cog: bool = False,
    overwrite: bool = False,
) -> Any:
    """The finished class map ``src`` (any grid in ``grid``'s CRS) written to ``output`` on
    ``grid`` by nearest neighbour, with its classes and colours: a finished, not yet committed
    :class:`geoddu.io.writer.ClassMapWriter` (commit it with the run's other outputs). Read
    through a warped VRT, REGRID_ROWS rows at a time; nodata (255) stays nodata."""
    import json

    import numpy as np
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import RasterioError
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    from .writer import CLASS_NODATA, ClassMapWriter

    writer = None
    try:
        with rasterio.open(src) as ds:
            names = json.loads(ds.tags()["CLASS_NAMES"])
            cmap = ds.colormap(1)
            writer = ClassMapWriter(
                output, width=grid.width, height=grid.height, crs=grid.crs,
                transform=grid.transform, class_names=names,
                class_colors=[tuple(cmap[i][:3]) for i in range(len(names))],
                overwrite=overwrite, cog=cog)
            with WarpedVRT(ds, crs=grid.crs, transform=grid.transform, width=grid.width,
                           height=grid.height, resampling=Resampling.nearest,
                           src_nodata=CLASS_NODATA, nodata=CLASS_NODATA) as vrt:
                for row in range(0, grid.height, REGRID_ROWS):
                    rows = min(REGRID_ROWS, grid.height - row)
                    part = vrt.read(1, window=Window(0, row, grid.width, rows))
                    writer.write(np.asarray(part), row, 0)
        writer.finish()
    except RasterioError as exc:
        if writer is not None:
            writer.abort()
        raise GeodduError(f"{output}: cannot put the class map on the scene's grid: "
                          f"{first_line(exc)}") from exc
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer
