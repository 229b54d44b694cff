"""The local executor's --resume route: the one-pass strips that a killed run of the same job
did not finish, their classes kept in raw strip files with a progress record
(:mod:`geoddu.engine.resume`, :mod:`geoddu.engine.strip_store`), then the output written from
those files in one fixed order and committed as every output is.

The result is byte-identical to an uninterrupted --resume run, wherever the first run was
killed: every strip computes exactly what it computes in one go (its left context encoded
again), and the GeoTIFF's bytes do not depend on which run wrote which strip.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from ..errors import GeodduError
from ..io.atomic import AtomicOutput
from ..resources import peak_rss_mb
from .job import Job, SegmentResult, finish_outputs
from .resume import ProgressRecord, fingerprint
from .runner import CancelFn, CellRunner, ProgressFn
from .sinks import open_writers
from .steps import DeviceWork, StripRun, resumed_work
from .strip_store import StripStore

__all__ = ["execute_resumable"]


def _check_resumable(job: Job) -> None:
    plan = job.plan
    if not plan.cells.communicates:
        raise GeodduError("--resume continues the one-pass strips of a model with "
                          "communication; this model's subimages are independent: run "
                          "without --resume")
    if plan.schedule.kind != "one-pass":
        raise GeodduError(f"--resume continues the one-pass strips; this run is planned as "
                          f"{plan.schedule.label} ({plan.schedule.why}): run without --resume")


def execute_resumable(
    job: Job, run: CellRunner, devices: Sequence[str], progress: ProgressFn | None,
    cancel: CancelFn | None,
) -> SegmentResult:
    """Run `job` (its request has ``resume``) here, continuing a killed run of it."""
    request, plan = job.request, job.plan
    writers: dict = {}
    record: ProgressRecord | None = None
    store: StripStore | None = None
    try:
        with job.running(writers):
            _check_resumable(job)
            # The output's own checks (exists, folder writable) before any work, as the
            # plain route's writers make them when opened.
            AtomicOutput(request.output, overwrite=request.overwrite).discard()
            strips = [r.strip.cols for w in plan.work for r in w.strips]
            record = ProgressRecord.open(request.output, fingerprint(job, strips, devices))
            done = set(record.done)
            store = StripStore(record.folder, plan.cells.partition, job.source.height,
                               job.source.width, strips)
            store.check_space([c for c in strips if c not in done])
            work = resumed_work(plan.cells, plan.work, done)
            lock = threading.Lock()

            def strip_done(strip: StripRun) -> None:
                store.finish_strip(strip.strip.cols)
                with lock:
                    record.strip_done(strip.strip.cols)

            run.over_strips(work, _totals(work), plan.cells, store, job.area, strip_done,
                            plan.trims_each_row)
            writers.update(open_writers(request, job.source, job.model))
            store.write_into(writers["classes"].write, run.check_cancel)
            writers["classes"].finish()
            job.close()
            extra_outputs = finish_outputs(job, writers, progress, cancel)
        record.remove()
    finally:
        if store is not None:
            store.close()
        if record is not None:
            record.close()
    return SegmentResult(
        **job.result_fields(),
        skipped=run.skipped,
        devices=list(devices),
        peak_rss_mb=peak_rss_mb(),
        encoder_runs=run.encoder_runs,
        schedule=plan.schedule.label,
        extra_outputs=extra_outputs,
    )


def _totals(work: Sequence[DeviceWork]) -> dict[str, int]:
    """Progress totals of what this run still does (a resumed run counts its own work)."""
    n = {"encode": 0, "communicate": 0, "decode": 0}
    for w in work:
        for stage, k in w.totals().items():
            n[stage] += k
    return {stage: k for stage, k in n.items() if k or stage == "decode"}
