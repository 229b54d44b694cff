"""The rank executor: one segment job spread over the ranks of a torch.distributed group.

* every rank opens the same job and takes its share of the plan (`SegmentPlan.for_rank`): a
  balanced contiguous block of subimages, row-major (`Partition.assign`); it reads and
  encodes only the planned cells of that block;
* the communication network needs, around each of a rank's cells, only `comm_halo` bottleneck
  pixels of the neighbouring cells. The plan says exactly which strips of its own cells each
  other rank needs, so the halos go point to point (`isend`/`irecv`, one message per pair of
  neighbouring ranks), never the whole mosaic to one rank;
* each rank decodes its own cells and sends the class (and probability) windows to rank 0,
  which alone writes the outputs, polygonises them with --vector, and renames them into place
  (`sinks.RemoteSink`, `sinks.Receiver`).
The outputs are byte for byte those of the local executor on the same request.

All traffic here is CPU tensors: with the mixed backend "cpu:gloo,cuda:nccl" (what
`init_from_env` sets up on GPU hosts) it goes through gloo while training collectives on CUDA
tensors go through NCCL.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist

from ..errors import GeodduError
from ..parallel.devices import resolve_device
from ..parallel.group import agree, broadcast, rank_and_world, wrap_comm_error
from ..parallel.halo import exchange_halos
from ..resources import peak_rss_mb
from .execute import execute
from .job import Job, SegmentResult, finish_outputs, open_job
from .planner import concrete_precision
from .request import SegmentRequest
from .runner import CancelFn, CellRunner, ProgressFn
from .sinks import BackgroundWriter, Receiver, RemoteSink, message_bytes, open_writers
from .stages import communicate_tiles, decode_cell, encode_cell

__all__ = ["DistributedSegmentResult", "execute_on_ranks"]

ONE_DEVICE_PER_RANK = "under torchrun each rank runs on one device; give one --device"


@dataclass
class DistributedSegmentResult(SegmentResult):
    ranks: int = 1
    halo_bytes_sent: list[int] = field(default_factory=list)
    output_bytes_sent: list[int] = field(default_factory=list)
    rank_peak_rss_mb: list[float] = field(default_factory=list)

    def summary(self) -> str:
        mode = (
            "with communication, in two passes"
            if self.communicated
            else "independent subimages (C=N)"
        )
        kinds = collections.Counter(self.devices)
        devices = ", ".join(f"{k} x{n}" for k, n in kinds.items())
        worst = int(np.argmax(self.rank_peak_rss_mb)) if self.rank_peak_rss_mb else 0
        return (
            f"{self.output}: {self.width} x {self.height} px, {self.subimages} subimages "
            f"({self.skipped} all-nodata skipped), {mode}, on {self.ranks} ranks ({devices}); "
            f"{self.seconds:.1f} s, {self.megapixels_per_second:.2f} Mpx/s, "
            f"halo sent max {max(self.halo_bytes_sent, default=0) / 2**20:.2f} MB/rank, "
            f"peak RSS max {self.peak_rss_mb:.0f} MB (rank {worst})"
        )


def _open_on_every_rank(
    request: SegmentRequest, rank: int, world: int, group: Any
) -> tuple[Job, dict]:
    """Open the job on every rank (and the outputs on rank 0); any rank's error stops all."""
    job, writers, error = None, {}, None
    if request.precision == "auto":  # rank 0's probe, so that every rank computes alike
        chosen = None
        if rank == 0:
            try:
                device = resolve_device(request.device, ONE_DEVICE_PER_RANK)
                chosen = concrete_precision(request, device).precision
            except Exception:  # noqa: BLE001 - opening the job below reports it on every rank
                chosen = None
        chosen = broadcast(chosen, group)
        if chosen is not None:
            request = dataclasses.replace(request, precision=chosen)
    try:
        if request.gpus is not None:
            raise GeodduError("--gpus does not apply under torchrun: one device per rank")
        if request.resume:
            raise GeodduError("--resume runs in one process (several devices: --gpus N or "
                              "--device a,b), not under torchrun; run without --resume")
        if request.schedule == "one-pass":
            # A rank's strip would need its neighbours' rows as they are encoded; ranks
            # exchange the encoded halo once, between two passes (docs/distributed.md).
            raise GeodduError("--schedule one-pass runs in one process; torchrun ranks run "
                              "two passes")
        device = resolve_device(request.device, ONE_DEVICE_PER_RANK)
        job = open_job(request, device=device, world=world, rank=rank)
        if rank == 0:
            writers = open_writers(request, job.source, job.model)
    except BaseException as exc:  # noqa: BLE001 - agreed below, so every rank stops together
        error = exc
    try:
        agree(error, group)
    except BaseException:
        for w in writers.values():
            w.abort()
        if job is not None:
            job.close()
        raise
    assert job is not None
    return job, writers


def execute_on_ranks(
    request: SegmentRequest,
    group: Any = None,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> SegmentResult:
    """Run `request` over the ranks of `group`; every rank calls this with the same request.

    Only rank 0 writes, and only its `progress` and `cancel` are used ("encode" and
    "communicate" count rank 0's own cells, "decode" counts windows written from all ranks).
    With one rank this is the local executor.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return execute(request, progress=progress, cancel=cancel)
    if request.mosaic:
        # Many files as one scene: every rank builds the same VRT, then this runs over it.
        from .mosaic import execute_mosaic

        def over_ranks(scene: SegmentRequest, p: ProgressFn | None, c: CancelFn | None,
                       ) -> SegmentResult:
            return execute_on_ranks(scene, group, p, c)

        return execute_mosaic(request, over_ranks, progress, cancel, ranks=True, group=group)
    if rank != 0:
        progress = cancel = None
    job, writers = _open_on_every_rank(request, rank, world, group)
    model, cells = job.model, job.plan.cells
    (mine,) = job.plan.work  # this rank's steps
    run = CellRunner(job.source, [model], progress, cancel)
    num_classes = len(model.classes)
    wants_probs = request.wants_probabilities  # every rank holds the same request
    msg_bytes = message_bytes(cells.partition, num_classes, wants_probs)
    halo_sent = 0
    extra_outputs: list[Path] = []
    with job.running(writers):
        communicated = None
        if cells.communicates:
            encoded = job.store()
            run.over_cells(
                "encode", lambda ctx, c, raw, ok: encode_cell(ctx, c, raw, ok, encoded),
                [mine.cells("encode")],
            )
            halos, halo_sent = exchange_halos(
                mine.halo, model.net.comm_features, cells.cell, encoded.get, group
            )
            owned = {c.index for c in cells.partition.assign(world)[rank]}

            def get_maps(index: tuple[int, int]) -> np.ndarray:
                if index in owned:
                    return encoded.get(index)
                return halos[index]  # a KeyError here would be a bug in the halo plan

            communicated = job.store()
            communicate_tiles(
                run, model, mine.tiles, cells.partition.grid, cells.cell,
                get_maps, communicated.put,
            )
            encoded.close()
            del halos

        def decode(sink: Any) -> None:
            run.over_cells(
                "decode",
                lambda ctx, c, raw, ok: decode_cell(ctx, c, raw, ok, communicated, sink, job.area),
                [mine.cells("decode")],
            )

        if rank == 0:
            sink = BackgroundWriter(writers, num_classes, job.source.height, job.source.width)
            with sink:
                receiver = Receiver(
                    cells.partition, len(cells.decode) - len(mine.cells("decode")), msg_bytes,
                    num_classes, sink, group,
                )
                receiver.start()
                total = len(cells.decode)
                run.progress = _globalised(progress, "decode", lambda: receiver.received, total)
                decode(sink)
                while receiver.is_alive():
                    receiver.join(0.1)
                    run.report("decode", 0, total)
                    run.check_cancel()
                if receiver.error is not None:
                    raise wrap_comm_error("receiving class windows", receiver.error)
            stats = _gather_stats(run, halo_sent, 0, group)
            # The last step (polygonising, renaming) may still fail: every rank learns of it.
            error = None
            try:
                extra_outputs = finish_outputs(job, writers, progress, cancel)
            except BaseException as exc:  # noqa: BLE001 - agreed, then raised on every rank
                error = exc
            agree(error, group)
        else:
            remote = RemoteSink(msg_bytes, wants_probs, group)
            decode(remote)
            remote.flush()
            stats = _gather_stats(run, halo_sent, remote.bytes_sent, group)
            agree(None, group)
    return DistributedSegmentResult(
        **job.result_fields(),
        skipped=sum(s["skipped"] for s in stats),
        devices=[s["device"] for s in stats],
        peak_rss_mb=max(s["rss"] for s in stats),
        encoder_runs=sum(s["encoder_runs"] for s in stats),
        extra_outputs=extra_outputs,
        ranks=world,
        halo_bytes_sent=[s["halo"] for s in stats],
        output_bytes_sent=[s["out"] for s in stats],
        rank_peak_rss_mb=[s["rss"] for s in stats],
    )


def _globalised(progress, stage, extra: Callable[[], int], total: int):
    """Progress for `stage` counted over all ranks (own cells plus received windows)."""
    if progress is None:
        return None
    own = [0]

    def report(s: str, done: int, t: int) -> None:
        if s != stage:
            progress(s, done, t)
            return
        own[0] = max(own[0], done)
        progress(s, own[0] + extra(), total)

    return report


def _gather_stats(run: CellRunner, halo: int, out: int, group: Any) -> list[dict[str, Any]]:
    mine = {
        "skipped": run.skipped,
        "encoder_runs": run.encoder_runs,
        "device": str(run.replicas[0].device),
        "rss": peak_rss_mb(),
        "halo": halo,
        "out": out,
    }
    gathered: list[Any] = [None] * dist.get_world_size(group)
    try:
        dist.all_gather_object(gathered, mine, group=group)
    except Exception as exc:  # noqa: BLE001
        raise wrap_comm_error("gathering the ranks' statistics", exc) from exc
    return gathered
