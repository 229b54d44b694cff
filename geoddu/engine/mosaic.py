"""`--mosaic`: many rasters segmented as one scene, so sheet edges are no seams.

The inputs become one GDAL virtual mosaic (`geoddu.io.mosaic.build_mosaic`) in a private
temporary folder beside the output, which the one-scene executor segments like any raster:
the result is exactly the whole union segmented in one piece. With ``output`` that is the
class map (probabilities, confidence and polygons as for one scene); with ``output_dir``, the
seamless map is written into the temporary folder and every input gets its window of it, on
its own grid, all renamed into place together. The temporary folder goes in any case.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import GeodduError
from ..io.atomic import AtomicOutput, check_distinct_paths, commit_all
from ..io.mosaic import Mosaic, build_mosaic, cut_class_map
from ..io.sources import batch_outputs
from .job import SegmentResult
from .planner import JobPlan, plan_job
from .request import SegmentRequest
from .runner import CancelFn, ProgressFn

__all__ = ["execute_mosaic", "mosaic_outputs", "open_mosaic", "plan_mosaic"]

# The one-scene executor (geoddu.engine.execute): passed in, so that it may call us.
Executor = Callable[[SegmentRequest, ProgressFn | None, CancelFn | None], SegmentResult]


def mosaic_outputs(request: SegmentRequest) -> list[Path]:
    """With output_dir: OUTPUT_DIR/<stem>.tif per input (named as a batch names them),
    checked before any work: distinct, not an input, not there unless --overwrite."""
    if request.output_dir is None:
        return []
    outs = batch_outputs(request.inputs, request.output_dir)
    for src in request.inputs:
        check_distinct_paths({str(o): o for o in outs}, {"input raster": src})
    taken = [o for o in outs if o.exists()]
    if taken and not request.overwrite:
        shown = ", ".join(map(str, taken[:3])) + (" ..." if len(taken) > 3 else "")
        raise GeodduError(f"{len(taken)} output(s) exist ({shown}); pass --overwrite to "
                          "replace them")
    return outs


def open_mosaic(request: SegmentRequest, folder: str | os.PathLike) -> Mosaic:
    """The request's inputs as one VRT in ``folder``."""
    return build_mosaic(request.inputs, folder, target_crs=request.target_crs,
                        resolution=request.resolution)


def scene_request(request: SegmentRequest, mosaic: Mosaic, output: str | None = None,
                  ) -> SegmentRequest:
    """The one-scene request over the mosaic's VRT (to ``output`` in place of -o)."""
    changes: dict = {"src": str(mosaic.path), "mosaic": False, "output_dir": None,
                     "target_crs": None, "resolution": None, "mosaic_of": request.inputs}
    if output is not None:
        # The seamless map is an intermediate: no COG, and the temporary folder is new.
        changes.update(output=output, cog=False, overwrite=False)
    return request.replace(**changes)


def execute_mosaic(request: SegmentRequest, run: Executor, progress: ProgressFn | None = None,
                   cancel: CancelFn | None = None) -> SegmentResult:
    """Segment ``request``'s inputs as one scene with ``run``. Nothing is at any output path
    unless every output is complete, and nothing temporary is left behind."""
    outs = mosaic_outputs(request)
    anchor = Path(request.output) if request.output is not None else outs[0]
    # Only for its private temporary area: .NAME.geoddu-tmp-PID-RANDOM/ beside the outputs
    # (removed by discard; a later run removes what a killed one left).
    area = AtomicOutput(anchor, overwrite=request.overwrite or request.output is None)
    try:
        folder = area.scratch()
        folder.mkdir()
        mosaic = open_mosaic(request, folder)
        if request.output is not None:
            return run(scene_request(request, mosaic), progress, cancel)
        seamless = folder / "classes.tif"
        result = run(scene_request(request, mosaic, str(seamless)), progress, cancel)
        writers = cut_class_map(seamless, mosaic.members, outs, cog=request.cog,
                                overwrite=request.overwrite)
        commit_all(w.output for w in writers)
        result.output = Path(request.output_dir or "")
        result.extra_outputs = outs
        return result
    finally:
        area.discard()


def plan_mosaic(request: SegmentRequest, world: int = 1) -> JobPlan:
    """The plan of the one-scene run over the mosaic (`geoddu segment --mosaic --plan`); the
    VRT is built in a temporary folder, removed before returning. No pixel is read."""
    with tempfile.TemporaryDirectory(prefix="geoddu-mosaic-plan-") as folder:
        mosaic = open_mosaic(request, folder)
        output = None if request.output is not None else str(Path(folder) / "classes.tif")
        return plan_job(scene_request(request, mosaic, output), world=world)
