"""Many rasters as one scene: a GDAL virtual mosaic (VRT) over them.

Orthophoto sheets, satellite tiles: one scene cut into files. :func:`build_mosaic` checks that
they can be one scene (one CRS, one resolution, one pixel grid, north-up, one band count and
data type, one nodata rule: refused in one line naming the odd ones out otherwise), or warps
them onto one grid (``target_crs`` / ``resolution``: rasterio's WarpedVRT, nearest neighbour),
and writes a VRT over their union with GDAL's own builder where there is one
(``osgeo.gdal.BuildVRT``, as inside QGIS; else the ``gdalbuildvrt`` program), else with our own
XML. Every builder gives the same VRT as far as pixels and masks go (tests/io/test_mosaic.py):

* **gaps** between inputs are invalid in GDAL's dataset mask. Inputs with one nodata value
  give the VRT that nodata value (what gdalbuildvrt does): a gap is nodata in every band.
  Inputs without nodata get a dataset ``<MaskBand>`` made of each input's ``mask,1`` (as
  gdalbuildvrt writes for inputs with masks): valid inside an input as its own mask says,
  invalid in a gap. Either way each input's own nodata / mask / alpha holds unchanged.
* **overlaps**: GDAL draws the sources in order, so a later input wins where it is valid;
  where it is masked or nodata the earlier one shows through (with nodata values, band by
  band: a source's pixel equal to nodata is transparent).

:func:`cut_class_map` then writes a class map per input, cut from the seamless one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.windows import Window

from geoddu.errors import GeodduError, first_line

from .mosaic_member import Member, read_member
from .mosaic_vrt import add_mask_band, gdal_builder, run_gdal_builder, vrt_xml
from .writer import ClassMapWriter

__all__ = ["BUILDERS", "Member", "Mosaic", "build_mosaic", "cut_class_map", "read_member"]

BUILDERS = ("auto", "osgeo", "gdalbuildvrt", "xml")
# How far (in pixels) an input's origin may sit off the common grid and still be on it:
# far below anything nearest-neighbour placement could notice.
GRID_TOLERANCE_PX = 1e-3
RESOLUTION_RTOL = 1e-6
# Warping picks source pixels by nearest neighbour: classes of a warped mosaic come from real
# pixel values (no blend of two sheets' radiometry at their edge), and it is GDAL's default.
WARP_RESAMPLING = Resampling.nearest
_CUT_ROWS = 512


@dataclass(frozen=True)
class Mosaic:
    path: Path
    width: int
    height: int
    crs: CRS | None
    transform: Affine
    members: tuple[Member, ...]
    builder: str  # which builder wrote the VRT
    warped: bool = False


# -- one scene or not ------------------------------------------------------------------------
def _odd_ones(members: Sequence[Member], key: Callable[[Member], Any],
              same: Callable[[Any, Any], bool] | None = None) -> tuple[Any, list[Member]]:
    """(the most common value, the members that differ from it); ties go to the first."""
    same = same or (lambda a, b: a == b)
    groups: list[tuple[Any, list[Member]]] = []
    for m in members:
        value = key(m)
        for v, group in groups:
            if same(v, value):
                group.append(m)
                break
        else:
            groups.append((value, [m]))
    norm, common = max(groups, key=lambda g: len(g[1]))  # max keeps the first of equals
    return norm, [m for m in members if m not in common]


def _refuse(what: str, odd: Sequence[Member], show: Callable[[Member], str], norm: str,
            total: int, hint: str) -> None:
    named = ", ".join(f"{m.path} ({show(m)})" for m in odd[:3])
    more = f" and {len(odd) - 3} more" if len(odd) > 3 else ""
    raise GeodduError(
        f"--mosaic: the inputs differ in {what}: {named}{more} unlike the other "
        f"{total - len(odd)} ({norm}); {hint}"
    )


def _crs_name(crs: CRS | None) -> str:
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else (crs.to_string()[:60] or "a custom CRS")


def _same_res(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return all(math.isclose(x, y, rel_tol=RESOLUTION_RTOL) for x, y in zip(a, b, strict=True))


def _nodata_kind(m: Member) -> Any:
    # GDAL's mask rules: a per-dataset mask or alpha wins over nodata.
    if m.masked:
        return "mask"
    if m.nodata is None:
        return "none"
    return ("nodata", "nan" if math.isnan(m.nodata) else m.nodata)


def _kind_text(m: Member) -> str:
    kind = _nodata_kind(m)
    return kind if isinstance(kind, str) else f"nodata {kind[1]}"


def check_alike(members: Sequence[Member], *, warping: bool = False) -> str:
    """Refuse, in one line naming the odd ones out, inputs that cannot be one scene as they
    are. Returns how the VRT marks gaps: "nodata" (one nodata value) or "mask"."""
    n = len(members)
    warp_hint = "give --target-crs EPSG:XXXX and/or --resolution R to warp them onto one grid"
    if not warping:
        norm, odd = _odd_ones(members, lambda m: m.crs)
        if odd:
            _refuse("CRS", odd, lambda m: _crs_name(m.crs), _crs_name(norm), n,
                    "give --target-crs EPSG:XXXX to warp them to one")
        odd = [m for m in members if not m.north_up]
        if odd:
            _refuse("orientation", odd, lambda m: "rotated or not north-up", "north-up", n,
                    warp_hint)
        norm, odd = _odd_ones(members, lambda m: m.resolution, _same_res)
        if odd:
            _refuse("resolution", odd, lambda m: "x".join(f"{v:g}" for v in m.resolution),
                    "x".join(f"{v:g}" for v in norm), n, warp_hint)
        ref = members[0].transform
        odd = [m for m in members if not _on_grid(m.transform, ref)]
        if odd:
            _refuse("pixel grid", odd, lambda m: "origin off the grid",
                    f"on {members[0].path}'s grid", n, warp_hint)
    norm, odd = _odd_ones(members, lambda m: m.count)
    if odd:
        _refuse("band count", odd, lambda m: f"{m.count} bands", f"{norm} bands", n,
                "a mosaic needs the same bands in every input")
    norm, odd = _odd_ones(members, lambda m: m.dtype)
    if odd:
        _refuse("data type", odd, lambda m: m.dtype, norm, n,
                "a mosaic needs one data type in every input")
    kinds = [_nodata_kind(m) for m in members]
    if all(isinstance(k, tuple) for k in kinds):
        norm, odd = _odd_ones(members, _nodata_kind)
        if not odd:
            return "nodata"
    elif all(isinstance(k, str) for k in kinds):
        return "mask"
    norm, odd = _odd_ones(members, _nodata_kind)
    _refuse("nodata", odd, _kind_text, _kind_text(next(m for m in members if m not in odd)), n,
            "give every input the same nodata value (gdal_edit.py -a_nodata) or none")
    raise AssertionError("unreachable")


def _on_grid(t: Affine, ref: Affine) -> bool:
    col = (t.c - ref.c) / ref.a
    row = (t.f - ref.f) / ref.e
    return abs(col - round(col)) <= GRID_TOLERANCE_PX and abs(row - round(row)) <= GRID_TOLERANCE_PX


def mosaic_grid(members: Sequence[Member]) -> tuple[Affine, int, int, list[Member]]:
    """The union's grid (origin at the top-left input corner, the inputs' pixel size, as
    gdalbuildvrt sets it) and each member placed on it."""
    a, e = members[0].transform.a, members[0].transform.e
    x0 = min(m.transform.c for m in members)
    y0 = max(m.transform.f for m in members)
    x1 = max(m.transform.c + m.width * a for m in members)
    y1 = min(m.transform.f + m.height * e for m in members)
    width, height = round((x1 - x0) / a), round((y1 - y0) / e)
    placed = [replace(m, col_off=round((m.transform.c - x0) / a),
                      row_off=round((m.transform.f - y0) / e)) for m in members]
    return Affine(a, 0.0, x0, 0.0, e, y0), width, height, placed


# -- warping ---------------------------------------------------------------------------------
def _target_crs(value: str) -> CRS:
    try:
        return CRS.from_user_input(value)
    except CRSError as exc:
        raise GeodduError(f"--target-crs {value}: not a CRS GDAL knows ({first_line(exc)})") \
            from exc


def warp_members(members: Sequence[Member], folder: Path, target_crs: str | None,
                 resolution: float | None) -> list[Member]:
    """Each input as a warped VRT (rasterio's WarpedVRT, nearest neighbour, an alpha band for
    what the input covers) on one grid: ``target_crs`` (default: the inputs' one CRS), pixels
    of ``resolution`` (default: the finest the inputs warp to) aligned on multiples of it
    (gdalwarp's -tap), over each input's warped bounds."""
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

    if target_crs is not None:
        dst_crs = _target_crs(target_crs)
    else:
        norm, odd = _odd_ones(members, lambda m: m.crs)
        if odd:
            _refuse("CRS", odd, lambda m: _crs_name(m.crs), _crs_name(norm), len(members),
                    "give --target-crs EPSG:XXXX to warp them to one")
        dst_crs = norm
    if any(m.crs is None for m in members):
        odd = [m for m in members if m.crs is None]
        _refuse("CRS", odd, lambda m: "no CRS", "georeferenced", len(members),
                "inputs without a CRS cannot be warped")
    if resolution is None:
        res = []
        for m in members:
            left, bottom, right, top = _bounds(m)
            t, _, _ = calculate_default_transform(m.crs, dst_crs, m.width, m.height,
                                                  left=left, bottom=bottom, right=right,
                                                  top=top)
            res.append(min(abs(t.a), abs(t.e)))
        resolution = min(res)
    r = float(resolution)
    warped = []
    for k, m in enumerate(members):
        left, bottom, right, top = _warped_bounds(m, dst_crs)
        x0, y1 = math.floor(left / r) * r, math.ceil(top / r) * r
        width = max(1, math.ceil((right - x0) / r - 1e-9))
        height = max(1, math.ceil((y1 - bottom) / r - 1e-9))
        transform = Affine(r, 0.0, x0, 0.0, -r, y1)
        path = folder / f"warped-{k}.vrt"
        try:
            with rasterio.open(m.source) as src, WarpedVRT(
                src, crs=dst_crs, transform=transform, width=width, height=height,
                resampling=WARP_RESAMPLING, add_alpha="alpha" not in m.colorinterp,
            ) as vrt:
                rasterio.shutil.copy(vrt, path, driver="VRT")
        except (RasterioError, ValueError) as exc:
            raise GeodduError(f"{m.path}: cannot warp it to {_crs_name(dst_crs)}: "
                              f"{first_line(exc)}") from exc
        w = read_member(m.path, str(path))
        # The data bands are the input's; the warped alpha band is the mask (mask,1).
        warped.append(replace(w, count=m.count, colorinterp=w.colorinterp[: m.count],
                              masked=True, nodata=None))
    return warped


def _bounds(m: Member) -> tuple[float, float, float, float]:
    corners = [m.transform * (c, r) for c in (0, m.width) for r in (0, m.height)]
    xs, ys = [c[0] for c in corners], [c[1] for c in corners]
    return min(xs), min(ys), max(xs), max(ys)


def _warped_bounds(m: Member, dst_crs: CRS) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    return transform_bounds(m.crs, dst_crs, *_bounds(m), densify_pts=21)


def build_mosaic(sources: Sequence[str], folder: str | os.PathLike, *,
                 target_crs: str | None = None, resolution: float | None = None,
                 builder: str = "auto") -> Mosaic:
    """Check ``sources`` (or warp them), and write ``folder/mosaic.vrt`` over their union.

    ``builder``: "auto" (GDAL's own where available, else our XML), or one of "osgeo",
    "gdalbuildvrt", "xml" to force it. Inputs are drawn in the order given (later on top)."""
    if builder not in BUILDERS:
        raise GeodduError(f"unknown VRT builder {builder!r}; choose from {', '.join(BUILDERS)}")
    if resolution is not None and not (math.isfinite(resolution) and resolution > 0):
        raise GeodduError(f"--resolution must be a positive number, got {resolution}")
    folder = Path(folder).absolute()
    members = [read_member(s) for s in sources]
    warping = target_crs is not None or resolution is not None
    if warping:
        # Band count and data type first: warping cannot reconcile them.
        check_alike([replace(m, masked=False, nodata=None) for m in members], warping=True)
        members = warp_members(members, folder, target_crs, resolution)
    gaps = check_alike(members, warping=warping)
    transform, width, height, members = mosaic_grid(members)
    path = folder / "mosaic.vrt"
    # The warped members' alpha band is their mask, not data: only our XML leaves it out.
    kind = None if warping else gdal_builder(builder)
    if kind is None:
        path.write_bytes(vrt_xml(members, transform, width, height, gaps))
    else:
        run_gdal_builder(kind, members, path)
        if gaps == "mask":
            add_mask_band(path)
    with rasterio.open(path) as ds:
        same = (ds.width, ds.height) == (width, height) and ds.transform.almost_equals(
            transform, precision=abs(transform.a) * GRID_TOLERANCE_PX)
    if not same:
        raise GeodduError(f"{kind or 'the VRT writer'} put the mosaic on another grid than "
                          f"{width} x {height} px at {tuple(transform)[:6]}")
    return Mosaic(path, width, height, members[0].crs, transform, tuple(members),
                  kind or "xml", warping)


# -- one class map per input ------------------------------------------------------------------
def cut_class_map(seamless: str | os.PathLike, members: Sequence[Member],
                  outputs: Sequence[str | os.PathLike], *, cog: bool = False,
                  overwrite: bool = False) -> list[ClassMapWriter]:
    """Write each member's window of the class map ``seamless`` to its output, on the
    member's own grid (CRS, transform, size), with the same classes and colours. Returns the
    finished, not yet committed writers (commit them together); on failure none is left."""
    writers: list[ClassMapWriter] = []
    try:
        with rasterio.open(seamless) as src:
            names = json.loads(src.tags()["CLASS_NAMES"])
            cmap = src.colormap(1)
            colors = [tuple(cmap[i][:3]) for i in range(len(names))]
            for m, out in zip(members, outputs, strict=True):
                w = ClassMapWriter(out, width=m.width, height=m.height, crs=m.crs,
                                   transform=m.transform, class_names=names,
                                   class_colors=colors, overwrite=overwrite, cog=cog)
                writers.append(w)
                for r in range(0, m.height, _CUT_ROWS):
                    rows = min(_CUT_ROWS, m.height - r)
                    part = src.read(1, window=Window(m.col_off, m.row_off + r, m.width, rows))
                    w.write(np.asarray(part), r, 0)
                w.finish()
    except BaseException:
        for w in writers:
            w.abort()
        raise
    return writers
