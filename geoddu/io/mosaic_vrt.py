"""The mosaic's VRT (geoddu.io.mosaic): written by GDAL's own builder where there is one
(``osgeo.gdal.BuildVRT``, as inside QGIS; else the ``gdalbuildvrt`` program), else by hand as
the XML gdalbuildvrt would write; a dataset mask band added where the inputs have no nodata, so
that the gaps between them are invalid (docs/seams.md)."""

from __future__ import annotations

import math
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

from affine import Affine

from geoddu.errors import GeodduError, first_line

from .mosaic_member import Member

_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "uint64": "UInt64", "int64": "Int64",
               "float32": "Float32", "float64": "Float64"}


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else repr(float(value)).removesuffix(".0")


def _source(band: ET.Element, m: Member, source_band: str, *, nodata: float | None,
            use_mask: bool) -> None:
    tag = "ComplexSource" if nodata is not None or use_mask else "SimpleSource"
    el = ET.SubElement(band, tag)
    ET.SubElement(el, "SourceFilename", relativeToVRT="0").text = m.source
    ET.SubElement(el, "SourceBand").text = source_band
    ET.SubElement(el, "SourceProperties", RasterXSize=str(m.width), RasterYSize=str(m.height),
                  DataType=_GDAL_TYPES.get(m.dtype, "Byte") if source_band[0] != "m" else "Byte",
                  BlockXSize=str(m.block[1]), BlockYSize=str(m.block[0]))
    ET.SubElement(el, "SrcRect", xOff="0", yOff="0", xSize=str(m.width), ySize=str(m.height))
    ET.SubElement(el, "DstRect", xOff=str(m.col_off), yOff=str(m.row_off),
                  xSize=str(m.width), ySize=str(m.height))
    if nodata is not None:
        ET.SubElement(el, "NODATA").text = _num(nodata)
    if use_mask:
        ET.SubElement(el, "UseMaskBand").text = "true"


def vrt_xml(members: Sequence[Member], transform: Affine, width: int, height: int,
            gaps: str) -> bytes:
    """The mosaic as VRT XML, written by hand: what gdalbuildvrt writes for these inputs,
    plus a dataset mask band where the inputs have no nodata (``gaps == "mask"``)."""
    first = members[0]
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if first.crs is not None:
        ET.SubElement(root, "SRS", dataAxisToSRSAxisMapping="1,2").text = first.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v))
                                                        for v in transform.to_gdal())
    if first.dtype not in _GDAL_TYPES:
        raise GeodduError(f"{first.path}: bands of different data types cannot be mosaicked")
    nodata = first.nodata if gaps == "nodata" else None
    for b in range(1, first.count + 1):
        band = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[first.dtype],
                             band=str(b))
        if nodata is not None:
            ET.SubElement(band, "NoDataValue").text = _num(nodata)
        ET.SubElement(band, "ColorInterp").text = first.colorinterp[b - 1].capitalize()
        for m in members:
            _source(band, m, str(b), nodata=nodata, use_mask=m.masked)
    if gaps == "mask":
        mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
        for m in members:
            _source(mask, m, "mask,1", nodata=None, use_mask=True)
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8") + b"\n"


def gdal_builder(builder: str) -> str | None:
    """Which of GDAL's builders to use: "osgeo" (its Python bindings, as inside QGIS),
    "gdalbuildvrt" (the program), or None (write the XML ourselves)."""
    if builder in ("osgeo", "auto"):
        try:
            from osgeo import gdal  # noqa: F401
        except ImportError:
            if builder == "osgeo":
                raise GeodduError("osgeo.gdal (GDAL's Python bindings) is not installed") \
                    from None
        else:
            return "osgeo"
    if builder in ("gdalbuildvrt", "auto"):
        if shutil.which("gdalbuildvrt"):
            return "gdalbuildvrt"
        if builder == "gdalbuildvrt":
            raise GeodduError("gdalbuildvrt is not on PATH")
    return None


def run_gdal_builder(kind: str, members: Sequence[Member], path: Path) -> None:
    sources = [m.source for m in members]
    if kind == "osgeo":
        from osgeo import gdal

        gdal.UseExceptions()
        try:
            ds = gdal.BuildVRT(str(path), sources)
            ds = None  # noqa: F841  (closing writes the file)
        except RuntimeError as exc:
            raise GeodduError(f"gdal.BuildVRT failed: {first_line(exc)}") from exc
        return
    listing = path.with_suffix(".txt")
    listing.write_text("".join(s + "\n" for s in sources))
    r = subprocess.run(["gdalbuildvrt", "-q", "-input_file_list", str(listing), str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0 or not path.is_file():
        lines = (r.stderr or r.stdout).strip().splitlines()
        raise GeodduError(f"gdalbuildvrt failed: {lines[-1] if lines else r.returncode}")


def add_mask_band(path: Path) -> None:
    """gdalbuildvrt writes a dataset mask band only where an input has a mask of its own:
    add one made of every input's ``mask,1``, in the VRT's source order, so gaps are invalid."""
    tree = ET.parse(path)
    root = tree.getroot()
    if root.find("MaskBand") is not None:
        return
    band = root.find("VRTRasterBand")
    assert band is not None
    mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    for src in band:
        if not src.tag.endswith("Source"):
            continue
        el = ET.SubElement(mask, "ComplexSource")
        for child in src:
            if child.tag in ("SourceFilename", "SrcRect", "DstRect"):
                el.append(child)
            elif child.tag == "SourceBand":
                ET.SubElement(el, "SourceBand").text = "mask,1"
        ET.SubElement(el, "UseMaskBand").text = "true"
    ET.indent(root)
    tree.write(path, encoding="utf-8")
