"""`geoddu.segment`: the Python front of the engine, a request built from keywords and run here."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from .execute import execute
from .job import SegmentResult
from .request import SegmentRequest
from .runner import CancelFn, ProgressFn

__all__ = ["segment"]


def segment(
    src: str | os.PathLike | Sequence[str | os.PathLike] | None,
    dst: str | os.PathLike | None,
    model: Any,
    *,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    **options: Any,
) -> SegmentResult:
    """Segment the raster `src` into the class map `dst` (atomic: nothing at `dst` on failure).

    `model` is a checkpoint path or a model from `geoddu.load_model`. `options` are the fields
    of :class:`geoddu.engine.request.SegmentRequest` (bands, subimage_size, device, gpus,
    precision, probabilities, confidence, cog, overwrite, aoi, aoi_layer, aoi_where, vector,
    vector_min_area, vector_simplify, scratch, store_max_ram_bytes, comm_tile_cells, schedule,
    strip_cells, skip_budget_bytes, band_files, stac, assets, band_resampling, resume, mosaic,
    output_dir, target_crs, resolution, resample, output_grid, strict), checked when the
    request is built.

    Pixel size (docs/resampling.md): a scene whose pixels are more than 1.5x the model's (its
    card's `pixel_size`) either way gives a `GeodduWarning`, or with ``strict=True`` a
    `GeodduError` before any work. ``resample="bilinear"`` (any GDAL warp kernel) reads the
    scene at the model's pixel size through a GDAL warped VRT; ``output_grid="scene"`` (the
    default) writes the class map on the scene's grid (nearest), ``"model"`` on the warped one.

    Bands in separate files: `src` None and `band_files=["B04.tif", "B03.tif", "B02.tif"]`, or
    `stac="item.json"` (or an https URL) with `assets=["red", "green", "blue"]`, in the model's
    band order; they are stacked on the first file's grid (docs/band-files.md). `resume=True`
    keeps progress beside `dst` after each strip and continues a killed or cancelled run of
    the same job (docs/resume.md).

    With ``mosaic=True``, `src` is several rasters (files, folders, .txt lists, VRTs) taken as
    one scene (docs/seams.md): `dst` is one map over their union, or, with `dst` None and
    ``output_dir``, one map per input cut from it.

    `progress(stage, done, total)` is called from the calling thread after each subimage (stages
    "encode", "communicate", "decode"); `cancel()` is polled between subimages and makes the run
    raise `Cancelled` without writing anything. An area of interest (`aoi`) limits the work to
    the subimages it touches plus those within the communication network's reach: pixels
    outside are nodata, pixels inside get exactly the classes of a full-scene run. All outputs
    appear together, once every one is complete and reads back in full, or none does.
    """
    request = SegmentRequest(src=src, output=dst, model=model, **options)
    return execute(request, progress=progress, cancel=cancel)
