"""`--mosaic`: many rasters segmented as one scene, so sheet edges are no seams.

The inputs become one GDAL virtual mosaic (`geoddu.io.mosaic.build_mosaic`) in a private
temporary folder beside the output, which the one-scene executor segments like any raster:
the result is exactly the whole union segmented in one piece. With ``output`` that is the
class map (probabilities, confidence and polygons as for one scene); with ``output_dir``, the
seamless map is written into the temporary folder and every input gets its window of it, on
its own grid, all renamed into place together. The temporary folder goes in any case.

Under torchrun (:func:`execute_mosaic` with a group of several ranks) every rank builds the
same VRT from the same inputs in a folder of its own (rank 0 beside the output, the others in
their own temporary folder), so no VRT names another rank's files; the ranks agree on the
mosaic checks (a refusal on one rank ends all with the same line) and on the mosaic's grid,
then the rank executor spreads the one scene over them. Rank 0 alone writes: the map of -o,
or the seamless map, which it cuts into the per-input maps once it is complete.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import GeodduError
from ..io.atomic import AtomicOutput, check_distinct_paths, commit_all
from ..io.mosaic import Mosaic, build_mosaic, cut_class_map
from ..io.sources import batch_outputs
from ..parallel.group import agree, broadcast, rank_and_world
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
                   cancel: CancelFn | None = None, *, ranks: bool = False,
                   group: Any = None) -> SegmentResult:
    """Segment ``request``'s inputs as one scene with ``run``. Nothing is at any output path
    unless every output is complete, and nothing temporary is left behind.

    With ``ranks`` (torchrun), every rank of ``group`` calls this with the same request and
    ``run`` is the rank executor; only rank 0 touches the outputs."""
    rank, world = rank_and_world(group) if ranks else (0, 1)
    area: AtomicOutput | None = None
    folder: Path | None = None
    error: BaseException | None = None
    try:
        try:
            if rank == 0:
                outs = mosaic_outputs(request)
                anchor = Path(request.output) if request.output is not None else outs[0]
                # Only for its private temporary area: .NAME.geoddu-tmp-PID-RANDOM/ beside
                # the outputs (removed by discard; a later run removes what a killed one
                # left).
                area = AtomicOutput(anchor, overwrite=request.overwrite or request.output is None)
                folder = area.scratch()
                folder.mkdir()
            else:
                # The outputs may not even be on this machine: a folder of our own, which
                # holds this rank's VRT (and warped inputs) and nothing else.
                folder = Path(tempfile.mkdtemp(prefix="geoddu-mosaic-"))
            mosaic = open_mosaic(request, folder)
        except BaseException as exc:  # noqa: BLE001 - agreed below: refused on every rank
            error = exc
        if world > 1:
            agree(error, group)
            # Same inputs, same checks, same VRT: a rank seeing other files (another
            # machine's copy) would segment another scene, so the grids are compared.
            agree(_other_grid(mosaic, broadcast(_grid_of(mosaic), group)), group)
        elif error is not None:
            raise error
        if request.output is not None:
            return run(scene_request(request, mosaic), progress, cancel)
        # Every rank runs the same scene request: rank 0's seamless path (only rank 0 writes).
        seamless = broadcast(str(folder / "classes.tif"), group) if world > 1 else str(
            folder / "classes.tif")
        result = run(scene_request(request, mosaic, seamless), progress, cancel)
        result.output = Path(request.output_dir or "")
        if rank == 0:
            result.extra_outputs = outs
        error = None
        if rank == 0:
            # Cut by rank 0 from the finished seamless map, as in one process: the cut is
            # a windowed copy, far cheaper than segmenting, and one writer commits all.
            try:
                writers = cut_class_map(seamless, mosaic.members, outs, cog=request.cog,
                                        overwrite=request.overwrite)
                commit_all(w.output for w in writers)
            except BaseException as exc:  # noqa: BLE001 - agreed below, or raised alone
                error = exc
        if world > 1:
            agree(error, group)
        elif error is not None:
            raise error
        return result
    finally:
        if area is not None:
            area.discard()
        elif folder is not None and rank != 0:
            shutil.rmtree(folder, ignore_errors=True)


def _grid_of(mosaic: Mosaic) -> tuple:
    return (mosaic.width, mosaic.height, tuple(mosaic.transform)[:6], str(mosaic.crs))


def _other_grid(mosaic: Mosaic, first: tuple) -> GeodduError | None:
    """An error if this rank's mosaic is not on rank 0's grid (``first``)."""
    mine = _grid_of(mosaic)
    if mine[:2] == first[:2] and mine[3] == first[3] and all(
            math.isclose(a, b, rel_tol=0, abs_tol=abs(first[2][0]) * 1e-6)
            for a, b in zip(mine[2], first[2], strict=True)):
        return None
    return GeodduError(f"the ranks built different mosaics ({mine[0]} x {mine[1]} px here, "
                       f"{first[0]} x {first[1]} px on rank 0): every rank must read the "
                       "same inputs")


def plan_mosaic(request: SegmentRequest, world: int = 1) -> JobPlan:
    """The plan of the one-scene run over the mosaic (`geoddu segment --mosaic --plan`); the
    VRT is built in a temporary folder, removed before returning. No pixel is read."""
    with tempfile.TemporaryDirectory(prefix="geoddu-mosaic-plan-") as folder:
        mosaic = open_mosaic(request, folder)
        output = None if request.output is not None else str(Path(folder) / "classes.tif")
        return plan_job(scene_request(request, mosaic, output), world=world)
