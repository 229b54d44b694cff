"""Input arguments as raster paths, and the output each input gets: shared by the batch
(`--output-dir`, one map per scene) and the mosaic (`--mosaic`, one scene of many files).
Path logic only: no GDAL, no torch, so requests can expand their inputs when built."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from geoddu.errors import GeodduError

__all__ = ["RASTER_SUFFIXES", "batch_outputs", "expand_sources", "output_name"]

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


def expand_sources(args: Sequence[str]) -> list[str]:
    """SRC arguments -> raster paths: a directory means its rasters, a .txt file one path per
    line ('#' starts a comment); anything else is passed to GDAL untouched (/vsicurl/...)."""
    out: list[str] = []
    for a in args:
        p = Path(a)
        if p.is_dir():
            found = sorted(
                str(f) for f in p.iterdir() if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES
            )
            if not found:
                raise GeodduError(f"{a}: no rasters ({', '.join(RASTER_SUFFIXES)}) in this folder")
            out += found
        elif p.suffix.lower() == ".txt" and p.is_file():
            for line in p.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    out.append(line)
        else:
            out.append(a)
    if not out:
        raise GeodduError("no input rasters")
    return out


def output_name(src: str) -> str:
    """`<stem>.tif` for any GDAL path, including /vsi... and URLs with a query string."""
    name = src.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    return PurePosixPath(name).stem + ".tif"


def batch_outputs(sources: Sequence[str], output_dir: str | os.PathLike) -> list[Path]:
    """OUTPUT_DIR/<stem>.tif per source; two sources that would share one output are refused."""
    outs = [Path(output_dir) / output_name(s) for s in sources]
    seen: dict[Path, str] = {}
    for s, o in zip(sources, outs, strict=True):
        if o in seen:
            raise GeodduError(f"{seen[o]} and {s} would both be written to {o}")
        seen[o] = s
    return outs
