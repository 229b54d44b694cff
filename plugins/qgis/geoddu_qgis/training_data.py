"""Stage QGIS layers as a geoddu folder dataset for ``geoddu:train``.

RUN_DIR/training-data gets images/*.vrt pointing at the rasters (nothing copied), labels.gpkg
written from the polygon layer (or labels/*.vrt from a label raster, resampled onto the image
grid where needed) and classes.json with names and colours taken from the layer's style, the
raster's categories and colour table, or the class values.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil

from qgis.core import (
    QgsFeature,
    QgsFeatureRequest,
    QgsField,
    QgsFields,
    QgsProcessingException,
    QgsVectorFileWriter,
)
from qgis.PyQt.QtCore import QVariant

from . import engine_bridge

#: The staged dataset inside the run folder, and the file that marks it as ours.
STAGED, MARKER = "training-data", ".geoddu-staged"
#: The class attribute of the staged labels.gpkg (the class values as text).
CLASS_COLUMN = "class"
MAX_CLASSES = 255
INTEGER_TYPES = ("Byte", "Int8", "UInt16", "Int16", "UInt32", "Int32")


def fmt(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def safe_name(name: str) -> str:
    """A file name part made of the layer name (letters, digits, ``-``, ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")[:40] or "raster"


def prepare_folder(data_dir: str) -> None:
    """An empty staging folder (replacing one an earlier run of this algorithm left)."""
    if os.path.lexists(data_dir):
        if not os.path.isfile(os.path.join(data_dir, MARKER)):
            raise QgsProcessingException(
                f"{data_dir}: exists and was not made by this algorithm; choose another run "
                "folder")
        remove_staged(data_dir)
    os.makedirs(os.path.join(data_dir, "images"))
    with open(os.path.join(data_dir, MARKER), "w", encoding="utf-8") as out:
        out.write("training data staged by the geoddu QGIS plugin (Train model); the run's "
                  "images and labels, for geoddu train --resume\n")


def remove_staged(data_dir: str) -> None:
    if os.path.isfile(os.path.join(data_dir, MARKER)):
        shutil.rmtree(data_dir, ignore_errors=True)


def translate_vrt(src: str, dst: str) -> None:
    """A VRT at ``dst`` reading the raster ``src`` as it is (no pixel copied)."""
    from osgeo import gdal

    with gdal_errors():
        done = gdal.Translate(dst, src, format="VRT")
    if done is None:
        raise QgsProcessingException(f"{src}: GDAL cannot read it ({gdal.GetLastErrorMsg()})")
    done = None


def label_vrt(label: str, image: str, dst: str) -> None:
    """The label raster on the grid of ``image``, as a VRT: as it is when the grids match,
    else resampled (nearest) with nodata where it does not reach."""
    from osgeo import gdal

    with gdal_errors():
        lab = gdal.Open(label)
        img = gdal.Open(image)
    if lab is None:
        raise QgsProcessingException(f"{label}: GDAL cannot read the label raster")
    band = lab.GetRasterBand(1)
    if gdal.GetDataTypeName(band.DataType) not in INTEGER_TYPES:
        raise QgsProcessingException(f"{label}: a label raster holds integer class values, not "
                                     f"{gdal.GetDataTypeName(band.DataType)}")
    same = ((lab.RasterXSize, lab.RasterYSize) == (img.RasterXSize, img.RasterYSize)
            and all(abs(a - b) < 1e-9 * max(1.0, abs(a))
                    for a, b in zip(lab.GetGeoTransform(), img.GetGeoTransform(), strict=True))
            and same_crs(lab.GetProjection(), img.GetProjection()))
    if same:
        lab = img = None
        translate_vrt(label, dst)
        return
    x0, dx, rx, y0, ry, dy = img.GetGeoTransform()
    width, height = img.RasterXSize, img.RasterYSize
    corners = [(x0 + c * dx + r * rx, y0 + c * ry + r * dy)
               for c in (0, width) for r in (0, height)]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]
    nodata = band.GetNoDataValue()
    options = {"format": "VRT", "outputBounds": (min(xs), min(ys), max(xs), max(ys)),
               "width": width, "height": height, "resampleAlg": "near",
               "dstSRS": img.GetProjection() or None}
    if nodata is None:
        options.update(outputType=gdal.GDT_UInt16, dstNodata=65535)  # beyond any class id
    else:
        options.update(dstNodata=nodata)
    lab = img = None
    with gdal_errors():
        done = gdal.Warp(dst, label, **options)
    if done is None:
        raise QgsProcessingException(
            f"{label}: cannot put it on the grid of {image} ({gdal.GetLastErrorMsg()})")
    done = None


def same_crs(a: str, b: str) -> bool:
    from osgeo import osr

    if not a or not b:
        return a == b
    first, second = osr.SpatialReference(wkt=a), osr.SpatialReference(wkt=b)
    return bool(first.IsSame(second))


class gdal_errors:  # noqa: N801 (a context manager, used like a function)
    """GDAL's Python errors as return values (None), with the message kept."""

    def __enter__(self):
        from osgeo import gdal

        gdal.PushErrorHandler("CPLQuietErrorHandler")
        return self

    def __exit__(self, *exc):
        from osgeo import gdal

        gdal.PopErrorHandler()
        return False


def raster_classes(layer, path: str, feedback) -> list[dict]:
    """The classes of a label raster: its distinct values (nodata left out), named and
    coloured after the layer's paletted style, else the raster's own category names and
    colour table, else ``class N``."""
    import numpy as np
    from osgeo import gdal

    ds = gdal.Open(path)
    band = ds.GetRasterBand(1)
    if gdal.GetDataTypeName(band.DataType) not in INTEGER_TYPES:
        raise QgsProcessingException(f"{path}: a label raster holds integer class values, not "
                                     f"{gdal.GetDataTypeName(band.DataType)}")
    nodata = band.GetNoDataValue()
    width, height = ds.RasterXSize, ds.RasterYSize
    rows = max(1, (1 << 22) // max(width, 1))
    found: set[int] = set()
    for y in range(0, height, rows):
        if feedback.isCanceled():
            raise engine_bridge.EngineCancelled("cancelled")
        block = band.ReadAsArray(0, y, width, min(rows, height - y))
        found.update(int(v) for v in np.unique(block))
        if len(found) > MAX_CLASSES + 1:
            break
    if nodata is not None:
        found.discard(int(nodata))
    if not found:
        raise QgsProcessingException(f"{path}: the label raster holds only nodata")
    if len(found) > MAX_CLASSES:
        raise QgsProcessingException(
            f"{path}: more than {MAX_CLASSES} distinct values; a label raster holds class ids")
    if min(found) < 0 or max(found) > 65535:
        raise QgsProcessingException(f"{path}: class values must be 0-65535")

    styled = {}
    renderer = layer.renderer() if layer is not None else None
    if renderer is not None and renderer.type() == "paletted":
        for item in renderer.classes():
            styled[int(item.value)] = (item.label, item.color)
    names = band.GetCategoryNames() or []
    table = band.GetColorTable()
    classes = []
    for value in sorted(found):
        entry = {"value": value}
        if value in styled and styled[value][0]:
            label, color = styled[value]
            entry["name"] = str(label)
            entry["color"] = [color.red(), color.green(), color.blue()]
        else:
            entry["name"] = (names[value] if value < len(names) and names[value]
                             else f"class {value}")
            if table is not None and value < table.GetCount():
                entry["color"] = list(table.GetColorEntry(value)[:3])
        classes.append(entry)
    ds = None
    return unique_names(classes)


def write_labels(source, field: str, path: str, context, feedback) -> list:
    """Write the labelled polygons of ``source`` (those with a ``field`` value) to the
    GeoPackage ``path``, the class as text in column ``class``; return the distinct values."""
    fields = QgsFields()
    fields.append(QgsField(CLASS_COLUMN, QVariant.String))
    options = QgsVectorFileWriter.SaveVectorOptions()
    options.driverName = "GPKG"
    options.layerName = "labels"
    options.fileEncoding = "UTF-8"
    writer = QgsVectorFileWriter.create(path, fields, source.wkbType(), source.sourceCrs(),
                                        context.transformContext(), options)
    if writer.hasError() != QgsVectorFileWriter.NoError:
        raise QgsProcessingException(f"{path}: cannot write the labels: {writer.errorMessage()}")
    index = source.fields().indexOf(field)
    request = QgsFeatureRequest().setSubsetOfAttributes([index])
    values: dict[str, object] = {}
    written = 0
    try:
        for feature in source.getFeatures(request):
            if feedback.isCanceled():
                raise engine_bridge.EngineCancelled("cancelled")
            value = feature.attribute(index)
            if is_null(value) or not feature.hasGeometry():
                continue
            key = str(value)
            values.setdefault(key, value)
            out = QgsFeature(fields)
            out.setGeometry(feature.geometry())
            out.setAttributes([key])
            if not writer.addFeature(out):
                raise QgsProcessingException(
                    f"{path}: cannot write the labels: {writer.errorMessage()}")
            written += 1
    finally:
        del writer  # closes the file
    if not written:
        raise QgsProcessingException(
            f"The label polygons have no feature with a {field} value (and a geometry)")
    return sorted(values.values(), key=sort_key)


def is_null(value) -> bool:
    if value is None:
        return True
    if isinstance(value, QVariant):
        return value.isNull()
    return False


def sort_key(value):
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def vector_classes(values: list, layer, field: str) -> list[dict]:
    """One class per distinct value, named and coloured after the layer's categories when it
    is styled by ``field``."""
    styled = {}
    renderer = layer.renderer() if layer is not None and hasattr(layer, "renderer") else None
    if (renderer is not None and renderer.type() == "categorizedSymbol"
            and renderer.classAttribute() == field):
        for category in renderer.categories():
            value = category.value()
            if isinstance(value, list) or is_null(value) or category.symbol() is None:
                continue
            color = category.symbol().color()
            styled[str(value)] = (category.label(), [color.red(), color.green(), color.blue()])
    classes = []
    for value in values:
        key = str(value)
        entry = {"name": key, "value": key}
        if key in styled:
            label, color = styled[key]
            entry["name"] = label or key
            entry["color"] = color
        classes.append(entry)
    if len(classes) > MAX_CLASSES:
        raise QgsProcessingException(
            f"The class field {field} has {len(classes)} distinct values; at most "
            f"{MAX_CLASSES} classes")
    return unique_names(classes)


def unique_names(classes: list[dict]) -> list[dict]:
    """Class names must differ: a repeated one gets its value added."""
    seen: dict[str, int] = {}
    for entry in classes:
        seen[entry["name"]] = seen.get(entry["name"], 0) + 1
    for entry in classes:
        if seen[entry["name"]] > 1:
            entry["name"] = f"{entry['name']} ({entry['value']})"
    return classes


def copy_atomically(src: str, dst: str) -> None:
    """Copy ``src`` to ``dst`` through a temporary file beside it: ``dst`` is never a
    half-written checkpoint."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    folder, name = os.path.split(os.path.abspath(dst))
    tmp = os.path.join(folder, f".{name}.geoddu-tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except OSError as exc:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise QgsProcessingException(
            f"{dst}: cannot write the checkpoint: {exc.strerror or exc}") from None
