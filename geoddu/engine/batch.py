"""Many scenes (`geoddu segment a.tif b.tif folder/ list.txt --output-dir out/`).

Scenes are spread over the ranks (largest first, to the least loaded rank); a scene larger
than a fair share of all pixels is run spatially by all ranks together. Each rank keeps a
heartbeat in torchrun's store, so a hung rank ends the job instead of stalling it, and a killed
batch continues with `--skip-existing`.
"""

from __future__ import annotations

import collections
import json
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..errors import GeodduError
from ..io.sources import RASTER_SUFFIXES, batch_outputs, expand_sources, output_name
from ..parallel.devices import resolve_device
from ..parallel.group import DEFAULT_TIMEOUT_S, AgreedError, agree, broadcast, rank_and_world
from ..predictor import SegmentationModel, load_model
from .execute import execute
from .execute_ranks import ONE_DEVICE_PER_RANK, execute_on_ranks
from .request import SegmentRequest
from .runner import ProgressFn

__all__ = [
    "RASTER_SUFFIXES",
    "BatchResult",
    "SceneRecord",
    "assign_scenes",
    "batch_outputs",
    "expand_sources",
    "output_name",
    "segment_batch",
]

@dataclass
class SceneRecord:
    src: str
    output: str
    status: str  # "written", "skipped" (output exists) or "failed"
    ranks: list[int]
    pixels: int = 0
    seconds: float = 0.0
    summary: str = ""


@dataclass
class BatchResult:
    scenes: list[SceneRecord]
    ranks: int
    seconds: float

    @property
    def failed(self) -> list[SceneRecord]:
        return [s for s in self.scenes if s.status == "failed"]

    def summary(self) -> str:
        count = collections.Counter(s.status for s in self.scenes)
        px = sum(s.pixels for s in self.scenes if s.status == "written")
        return (
            f"{len(self.scenes)} scene(s): {count['written']} written, "
            f"{count['skipped']} skipped (output exists), {count['failed']} failed; "
            f"on {self.ranks} rank(s); {self.seconds:.1f} s, "
            f"{px / 1e6 / max(self.seconds, 1e-9):.2f} Mpx/s"
        )


def assign_scenes(
    pixels: Sequence[int], world: int, spatial_factor: float = 1.0
) -> tuple[list[int], list[list[int]]]:
    """(scenes run spatially by all ranks, scenes of each rank).

    A scene with more than `spatial_factor` x (total / world) pixels would alone keep its rank
    busy longer than the others' whole share: all ranks run it together. The others go largest
    first to the least loaded rank (ties: lowest rank), which every rank computes identically.
    """
    total = sum(pixels)
    spatial = [k for k, p in enumerate(pixels) if world > 1 and p > spatial_factor * total / world]
    load = [0] * world
    ranks: list[list[int]] = [[] for _ in range(world)]
    rest = sorted((k for k in range(len(pixels)) if k not in spatial), key=lambda k: -pixels[k])
    for k in rest:
        r = min(range(world), key=lambda r: (load[r], r))
        ranks[r].append(k)
        load[r] += pixels[k]
    return spatial, [sorted(r) for r in ranks]


def segment_batch(
    jobs: Sequence[tuple[str, str | os.PathLike]],
    options: dict[str, Any],
    *,
    skip_existing: bool = False,
    spatial_factor: float = 1.0,
    progress: ProgressFn | None = None,
    on_scene: Callable[[SceneRecord], None] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> BatchResult:
    """Segment (src, dst) pairs over the ranks of the default group (or alone without one).

    `options` are the fields of one request (model included) without its source and output:
    each scene is one :class:`SegmentRequest` made from them. Every output is atomic, so a
    killed batch leaves finished scenes complete and the rest absent; a rerun with
    `skip_existing` does only what is missing. A scene that cannot be read or segmented (a
    GeodduError) is reported as failed and the batch goes on. `progress` and `on_scene` are used
    on rank 0 only (on_scene: each scene rank 0 finished). `timeout_s` bounds how long a rank
    may go without progress before the job is ended.
    """
    t0 = time.perf_counter()
    rank, world = rank_and_world()
    if rank != 0:
        progress = on_scene = None
    dsts = [str(d) for _, d in jobs]
    options = dict(options)
    overwrite = bool(options.get("overwrite"))
    error = None
    try:
        if options.get("gpus") is not None and world > 1:
            raise GeodduError("--gpus does not apply under torchrun: one device per rank")
        if world > 1:
            dev = resolve_device(options.get("device"), ONE_DEVICE_PER_RANK)
            options["device"] = str(dev)
        else:
            dev = None
        # Loaded once for every scene (the requests take the loaded model).
        if not isinstance(options["model"], SegmentationModel):
            options["model"] = load_model(options["model"], device=dev or "cpu",
                                          precision=options.get("precision") or "fp32")
        # Every rank probes a strided share of the scenes: sizes for the assignment, and
        # whether the output exists (on this rank's disk: hosts need not share one).
        probes = [_probe(s, d) if k % world == rank else None for k, (s, d) in enumerate(jobs)]
        exists = [Path(d).exists() for d in dsts]
    except BaseException as exc:  # noqa: BLE001
        error = exc
    if world > 1:
        agree(error, None)
        probes, exists = _merge_probes(probes, exists)
        token = broadcast(uuid.uuid4().hex, None)
    elif error is not None:
        raise error
    else:
        token = ""
    taken = [k for k in range(len(jobs)) if exists[k]]
    if taken and not (skip_existing or overwrite):
        shown = ", ".join(dsts[k] for k in taken[:3]) + (" ..." if len(taken) > 3 else "")
        raise AgreedError(
            f"{len(taken)} output(s) exist ({shown}); pass --skip-existing to continue a batch "
            f"or --overwrite to replace them"
        )
    records = [SceneRecord(s, d, "", []) for s, d in jobs]
    todo = []
    for k, rec in enumerate(records):
        if exists[k] and skip_existing:
            rec.status = "skipped"
        elif isinstance(probes[k], str):
            rec.status, rec.summary = "failed", probes[k]
        else:
            rec.pixels = probes[k][0] * probes[k][1]
            todo.append(k)
    spatial, mine = assign_scenes([records[k].pixels for k in todo], world, spatial_factor)
    spatial = [todo[k] for k in spatial]
    mine = [[todo[k] for k in r] for r in mine]
    beat = _Heartbeat(token, rank) if world > 1 else None

    def tick(stage: str, done: int, total: int) -> None:
        if beat is not None:
            beat()
        if progress is not None:
            progress(stage, done, total)

    # First the spatial scenes, all ranks together, then this rank's own.
    queue = [(k, True) for k in spatial] + [(k, False) for k in mine[rank]]
    for n, (k, together) in enumerate(queue):
        rec = records[k]
        start = time.perf_counter()
        run = execute_on_ranks if together else execute
        try:
            request = SegmentRequest(src=rec.src, output=rec.output, **options)
            res = run(request, progress=tick)
            rec.status, rec.summary = "written", res.summary()
        except GeodduError as exc:
            if together and not isinstance(exc, AgreedError):
                raise  # the other ranks are in the middle of the same scene: end the job
            rec.status, rec.summary = "failed", f"{rec.src}: {exc}"
        rec.ranks = list(range(world)) if together else [rank]
        rec.seconds = time.perf_counter() - start
        if on_scene is not None:
            on_scene(rec)
        tick("scenes", n + 1, len(queue))
        if beat is not None:
            beat(force=True)
    if world > 1:
        local = {k: records[k].__dict__ for k in mine[rank]}
        for part in _wait_all(token, rank, world, local, timeout_s):
            for k, rec in part.items():
                records[int(k)] = SceneRecord(**rec)
    return BatchResult(records, world, time.perf_counter() - t0)


def _probe(src: str, dst: str) -> tuple[int, int] | str:
    from ..io.raster import open_raster

    try:
        r = open_raster(src)
    except GeodduError as exc:
        return f"{src}: {exc}"
    try:
        return r.height, r.width
    finally:
        r.close()


def _merge_probes(probes: list[Any], exists: list[bool]) -> tuple[list[Any], list[bool]]:
    everyone: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, (probes, exists))
    merged = [next(p[k] for p, _ in everyone if p[k] is not None) for k in range(len(probes))]
    return merged, [any(e[k] for _, e in everyone) for k in range(len(exists))]


class _Heartbeat:
    """A counter in the job's store that a rank bumps as it makes progress (at most once a
    second): the others tell a slow rank from a hung one without any collective timeout."""

    def __init__(self, token: str, rank: int) -> None:
        self.store = dist.distributed_c10d._get_default_store()
        self.key = f"geoddu/{token}/beat/{rank}"
        self.last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last > 1.0:
            self.store.add(self.key, 1)
            self.last = now


def _wait_all(token: str, rank: int, world: int, mine: dict, timeout_s: float) -> list[dict]:
    """Post this rank's records, then wait for every rank's; a rank whose heartbeat stands still
    for `timeout_s` ends the job."""
    store = dist.distributed_c10d._get_default_store()
    store.set(f"geoddu/{token}/done/{rank}", json.dumps(mine))
    seen: dict[int, tuple[int, float]] = {}
    while True:
        waiting = [r for r in range(world) if not store.check([f"geoddu/{token}/done/{r}"])]
        if not waiting:
            break
        now = time.monotonic()
        for r in waiting:
            count = store.add(f"geoddu/{token}/beat/{r}", 0)
            if seen.get(r, (None, 0.0))[0] != count:
                seen[r] = (count, now)
            elif now - seen[r][1] > timeout_s:
                raise GeodduError(
                    f"rank {r} made no progress for {timeout_s:.0f} s; ending the job"
                )
        time.sleep(0.2)
    return [json.loads(store.get(f"geoddu/{token}/done/{r}")) for r in range(world)]
