"""Writing a polygon layer atomically: the driver by extension, the write, the removal.

The layer is written with geopandas/pyogrio into a temporary folder beside the destination and
renamed into place (:class:`geoddu.io.writer.AtomicOutput`); a failed run leaves nothing. A
shapefile's companion files are renamed first and the ``.shp`` last.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

from geoddu.errors import GeodduError
from geoddu.io.gdal_errors import disk_full
from geoddu.io.vector import pyogrio_path
from geoddu.io.writer import AtomicOutput

# Extension -> OGR driver. Shapefile is several files; it is handled specially when written.
DRIVERS: dict[str, str] = {
    ".gpkg": "GPKG",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".fgb": "FlatGeobuf",
    ".shp": "ESRI Shapefile",
}


def driver_for(path: str | os.PathLike[str]) -> str:
    """The OGR driver for an output path, by extension."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix not in DRIVERS:
        known = ", ".join(DRIVERS)
        raise GeodduError(
            f"{path}: unknown vector format {suffix or '(no extension)'!r}; use one of {known}"
        )
    return DRIVERS[suffix]


def _shapefile_parts(path: Path) -> list[Path]:
    exts = (".shp", ".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx")
    return [path.with_suffix(ext) for ext in exts]


def write_layer(gdf: Any, dst: Path, driver: str, overwrite: bool) -> None:
    out = AtomicOutput(dst, overwrite=overwrite)
    shapefile = driver == "ESRI Shapefile"
    if shapefile and not overwrite:
        existing = [p for p in _shapefile_parts(dst) if p.exists()]
        if existing:
            out.discard()
            raise GeodduError(f"{existing[0]} exists; pass --overwrite to replace it")
    # A private folder beside the destination: drivers may create sidecar or scratch files
    # next to what they write, and all of them go with the folder if anything fails.
    folder = out.scratch()
    try:
        try:
            folder.mkdir()
            # A plain name inside: pyogrio reads ';', '?' and '#' in a path as URL syntax, so
            # the user's name (any legal one) only appears with the final rename.
            target = folder / f"out{dst.suffix}"
            kwargs: dict[str, Any] = {"driver": driver}
            if not shapefile:
                # GDAL refuses some layer names (GeoPackage: one starting with '-'); the file
                # name is the user's, the layer name only has to be recognisable.
                kwargs["layer"] = re.sub(r"^[^A-Za-z0-9_]+", "", dst.stem) or "classes"
            try:
                with pyogrio_path(target) as safe:
                    gdf.to_file(safe, **kwargs)
            except GeodduError:
                raise
            except Exception as exc:  # noqa: BLE001 - pyogrio/GDAL raise many types
                if disk_full(target):
                    raise GeodduError(f"no space left on device writing {dst}") from exc
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise GeodduError(f"{dst}: cannot write {driver}: {msg}") from exc
            if shapefile:
                # Several files: each rename is atomic, the .shp goes last (with the commit),
                # so a .shp that is there always has its companions.
                for part in _shapefile_parts(dst)[1:]:
                    made = target.with_suffix(part.suffix)
                    if made.exists():
                        os.replace(made, part)
                    elif part.exists():
                        part.unlink()  # a stale index of the replaced shapefile
            os.replace(target, out.temp)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        out.commit()
    except BaseException:
        out.discard()
        raise


def remove_vector(dst: str | os.PathLike[str]) -> None:
    """Remove a written vector output (with a shapefile's companion files)."""
    path = Path(os.fspath(dst))
    parts = _shapefile_parts(path) if driver_for(path) == "ESRI Shapefile" else [path]
    for part in parts:
        part.unlink(missing_ok=True)
