"""The local executor: one segment job in this process, on one or several devices, as its plan
says (`job.plan`: each device's steps, `geoddu/engine/steps.py`).

The whole scene is treated as one DDU-Net in bounded memory. Where a strip's skip connections
fit the budget, in one pass (`geoddu/engine/strips.py`): each device takes strips of columns
top to bottom, encoding each subimage once and decoding each row as soon as the communication
network's halo below it is encoded. Otherwise, in two passes:

1. encode: every planned subimage window is read and encoded; only its last F bottleneck maps
   are kept (a MapStore: RAM while small, a scratch file once large);
2. communicate: the communication network runs over the stitched bottleneck mosaic in tiles,
   each with a halo equal to the network's reach, so the result equals one pass over the
   whole mosaic;
3. decode: every window is read and encoded again (for the skips), its F maps are replaced
   by the communicated ones, decoded, and handed to the background writer.
Without communication (C=N or F=0) subimages are independent and the decode pass does it all.
The result equals `SegmentationModel.predict` on the whole scene (same grid, same nodata rule).
The torchrun executor (`execute_ranks.py`) runs the same plan and stages over ranks.
"""

from __future__ import annotations

import copy
from typing import Any

from ..parallel.devices import resolve_devices
from ..resources import peak_rss_mb
from .job import SegmentResult, finish_outputs, open_job
from .request import SegmentRequest
from .resume import discard_resume_folder
from .runner import CancelFn, CellRunner, ProgressFn
from .sinks import BackgroundWriter, open_writers
from .stages import communicate_tiles, decode_cell, encode_cell

__all__ = ["execute"]


def execute(
    request: SegmentRequest, progress: ProgressFn | None = None, cancel: CancelFn | None = None
) -> SegmentResult:
    """Run `request` here. Nothing is at any output path unless every output is complete."""
    if request.mosaic:  # many files as one scene: a VRT over them, run as below
        from .mosaic import execute_mosaic

        return execute_mosaic(request, _execute_scene, progress, cancel)
    return _execute_scene(request, progress, cancel)


def _execute_scene(
    request: SegmentRequest, progress: ProgressFn | None, cancel: CancelFn | None
) -> SegmentResult:
    devices = resolve_devices(request.device, request.gpus)
    job = open_job(request, devices=[str(d) for d in devices])
    model, plan, cells = job.model, job.plan, job.plan.cells
    replicas = [model if model.device == d else copy.deepcopy(model).to(d).eval() for d in devices]
    run = CellRunner(job.source, replicas, progress, cancel)
    if request.resume:
        from .resume_run import execute_resumable

        return execute_resumable(job, run, [str(d) for d in devices], progress, cancel)
    writers: dict[str, Any] = {}
    with job.running(writers):
        writers.update(open_writers(request, job.source, model))
        with BackgroundWriter(writers, len(model.classes)) as sink:
            if cells.communicates and plan.schedule.kind == "one-pass":
                run.over_strips(plan.work, plan.totals, cells, sink, job.area,
                                trim_each_row=plan.trims_each_row)
            else:
                communicated = None
                if cells.communicates:
                    encoded = job.store()
                    run.over_cells(
                        "encode",
                        lambda ctx, c, raw, ok: encode_cell(ctx, c, raw, ok, encoded),
                        [w.cells("encode") for w in plan.work],
                    )
                    communicated = job.store()
                    communicate_tiles(
                        run, replicas[0], plan.work[0].tiles,
                        cells.partition.grid, cells.cell, encoded.get, communicated.put,
                    )
                    encoded.close()
                run.over_cells(
                    "decode",
                    lambda ctx, c, raw, ok: decode_cell(
                        ctx, c, raw, ok, communicated, sink, job.area
                    ),
                    [w.cells("decode") for w in plan.work],
                )
        job.close()  # the scratch space goes before polygonising
        extra_outputs = finish_outputs(job, writers, progress, cancel)
    discard_resume_folder(request.output)  # a killed --resume run's, now superseded
    return SegmentResult(
        **job.result_fields(),
        skipped=run.skipped,
        devices=[str(d) for d in devices],
        peak_rss_mb=peak_rss_mb(),
        encoder_runs=run.encoder_runs,
        schedule=plan.schedule.label,
        extra_outputs=extra_outputs,
    )
