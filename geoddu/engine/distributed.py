"""The streaming engine over several processes: torch.distributed, launched by `torchrun`.

One scene, spatially (`segment_distributed`):

* every rank computes the same subimage grid and the same balanced contiguous assignment
  (`balanced_blocks`, row-major), and reads and encodes only its own block;
* the communication network needs, around each of a rank's cells, only `comm_halo` bottleneck
  pixels of the neighbouring cells. Every rank derives from the assignment exactly which strips
  of its own cells each other rank needs, so the halos go point to point (`isend`/`irecv`,
  one message per pair of neighbouring ranks), never the whole mosaic to one rank;
* each rank decodes its own cells and sends the uint8 class windows to rank 0, which alone
  writes the (atomic) output. Rank 0 keeps a bounded number of receives posted from any
  source; a sender's `isend` completes only once rank 0 has posted a receive for it, so memory
  stays bounded on both sides whatever the scene size.

Many scenes (`segment_batch`): scenes are spread over the ranks (largest first, to the least
loaded rank); a scene larger than a fair share of all pixels is run spatially by all ranks.

All traffic here is CPU tensors: with the mixed backend "cpu:gloo,cuda:nccl" (what
`init_from_env` sets up on GPU hosts) it goes through gloo while training collectives on CUDA
tensors go through NCCL.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..errors import GeodduError
from ..io.atomic import check_distinct_paths
from ..partition import Partition, Subimage, balanced_blocks
from ..predictor import SegmentationModel, load_model
from ..resources import peak_rss_mb
from . import streaming
from .devices import resolve_device
from .mapstore import MapStore
from .streaming import (
    COMM_TILE_CELLS,
    STORE_MAX_RAM_BYTES,
    CancelFn,
    ProgressFn,
    SegmentResult,
    _BackgroundWriter,
    _decode,
    _encode,
    _open_source,
    _open_writers,
    _Run,
    check_scratch_space,
    communicate_tiles,
    run_tiles,
    scratch_dir,
)

HALO_TAG = 17
ONE_DEVICE_PER_RANK = "under torchrun each rank runs on one device; give one --device"
OUTPUT_TAG = 23
DEFAULT_TIMEOUT_S = 1800
# Receives rank 0 keeps posted for class windows, and sends a rank keeps in flight: enough to
# keep every sender busy, few enough that memory does not grow with the scene or the ranks.
RECV_BYTES_IN_FLIGHT = 64 * 2**20
SENDS_IN_FLIGHT = 2
_HEADER = 3  # int64: cell row, cell column, probabilities present
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2")


class AgreedError(GeodduError):
    """A user error every rank raised together (so only rank 0 needs to print it)."""


# -- the process group ------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun (or any launcher setting RANK/WORLD_SIZE)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_from_env(timeout_s: float = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the group torchrun describes in the environment; return this rank's device.

    CUDA hosts get the mixed backend: NCCL for CUDA tensors, gloo for the CPU tensors the
    segment engine exchanges. `timeout_s` bounds every collective and point-to-point wait, so
    a rank that hangs ends the whole job with an error instead of a silent hang.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local % torch.cuda.device_count())
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return device


def rank_and_world(group: Any = None) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


def agree(error: BaseException | None, group: Any) -> None:
    """Raise the same error on every rank if any rank had one (before any compute starts)."""
    msg = None if error is None else (str(error) or type(error).__name__)
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, msg, group=group)
    for r, m in enumerate(gathered):
        if m is not None:
            if error is not None and not isinstance(error, GeodduError):
                raise error  # a bug, not a user error: keep the traceback on the rank that had it
            prefix = "" if r == 0 or m == msg else f"rank {r}: "
            raise AgreedError(prefix + m) from error


def _wrap_comm_error(what: str, exc: BaseException) -> GeodduError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return GeodduError(f"{what} failed (a rank died or the collective timed out): {first}")


# -- the assignment and the halo plan ---------------------------------------------------------
def owner_grid(part: Partition, world: int) -> np.ndarray:
    """(rows, cols) array: which rank owns each cell (balanced contiguous row-major blocks)."""
    sizes = [len(b) for b in balanced_blocks(range(len(part)), world)]
    return np.repeat(np.arange(world, dtype=np.int32), sizes).reshape(part.grid)


def _cell_of(part: Partition, index: tuple[int, int]) -> Subimage:
    i, j = index
    return Subimage(
        i, j, part.row_offsets[i], part.col_offsets[j], part.row_sizes[i], part.col_sizes[j]
    )


def _strip(p: tuple[int, int], readers: Sequence[tuple[int, int]], cell: int, halo: int):
    """Mask (cell, cell) of cell p's bottleneck pixels within `halo` of any reader cell: what a
    communication tile around those readers reads of p (tiles are extended by the halo)."""
    mask = np.zeros((cell, cell), bool)
    for qi, qj in readers:
        y0, y1 = max(0, (qi - p[0]) * cell - halo), min(cell, (qi - p[0] + 1) * cell + halo)
        x0, x1 = max(0, (qj - p[1]) * cell - halo), min(cell, (qj - p[1] + 1) * cell + halo)
        if y0 < y1 and x0 < x1:
            mask[y0:y1, x0:x1] = True
    return mask


@dataclass
class HaloPlan:
    """What one rank sends to and receives from each other rank: (cell, mask) lists in
    row-major cell order, the same order on both sides of every pair."""

    sends: dict[int, list[tuple[tuple[int, int], np.ndarray]]]
    recvs: dict[int, list[tuple[tuple[int, int], np.ndarray]]]

    def values(self, side: str) -> dict[int, int]:
        """Bottleneck pixels (per map) exchanged with each peer."""
        plan = self.sends if side == "send" else self.recvs
        return {r: int(sum(m.sum() for _, m in items)) for r, items in plan.items()}


def halo_plan(owner: np.ndarray, me: int, cell: int, halo: int) -> HaloPlan:
    rows, cols = owner.shape
    reach = -(-halo // cell)
    sends: dict[int, list] = collections.defaultdict(list)
    recvs: dict[int, list] = collections.defaultdict(list)
    mine = np.argwhere(owner == me)
    near: set[tuple[int, int]] = set()
    for i, j in mine:
        i0, i1, j0, j1 = (
            max(0, i - reach),
            min(rows, i + reach + 1),
            max(0, j - reach),
            min(cols, j + reach + 1),
        )
        if (owner[i0:i1, j0:j1] == me).all():
            continue  # an interior cell: nobody else reads it, it reads nobody
        for a in range(i0, i1):
            for b in range(j0, j1):
                near.add((a, b))
    for p in sorted(near):
        i0, i1 = max(0, p[0] - reach), min(rows, p[0] + reach + 1)
        j0, j1 = max(0, p[1] - reach), min(cols, p[1] + reach + 1)
        around = [(a, b) for a in range(i0, i1) for b in range(j0, j1)]
        o = int(owner[p])
        if o == me:
            readers: dict[int, list] = collections.defaultdict(list)
            for q in around:
                if owner[q] != me:
                    readers[int(owner[q])].append(q)
            for r, qs in readers.items():
                mask = _strip(p, qs, cell, halo)
                if mask.any():
                    sends[r].append((p, mask))
        else:
            mask = _strip(p, [q for q in around if owner[q] == me], cell, halo)
            if mask.any():
                recvs[o].append((p, mask))
    return HaloPlan(dict(sends), dict(recvs))


def exchange_halos(
    plan: HaloPlan,
    features: int,
    cell: int,
    get_maps: Callable[[tuple[int, int]], np.ndarray],
    group: Any = None,
) -> tuple[dict[tuple[int, int], np.ndarray], int]:
    """Send our strips, receive the neighbours' (one message per peer and direction, all posted
    before any wait). Returns the received cells (zeros outside their strip) and bytes sent."""
    ops, received, sent = [], {}, 0
    for peer, items in sorted(plan.sends.items()):
        buf = np.concatenate([get_maps(p)[:, m].ravel() for p, m in items])
        sent += buf.nbytes
        dst = _global(peer, group)
        ops.append(dist.P2POp(dist.isend, torch.from_numpy(buf), dst, group, HALO_TAG))
    bufs = {}
    for peer, items in sorted(plan.recvs.items()):
        n = sum(int(m.sum()) for _, m in items) * features
        bufs[peer] = torch.empty(n, dtype=torch.float32)
        ops.append(dist.P2POp(dist.irecv, bufs[peer], _global(peer, group), group, HALO_TAG))
    if ops:
        try:
            for work in dist.batch_isend_irecv(ops):
                work.wait()
        except Exception as exc:  # noqa: BLE001 - turned into one line for the user
            raise _wrap_comm_error("the halo exchange", exc) from exc
    for peer, items in plan.recvs.items():
        flat, off = bufs[peer].numpy(), 0
        for p, m in items:
            n = int(m.sum())
            maps = np.zeros((features, cell, cell), np.float32)
            maps[:, m] = flat[off : off + features * n].reshape(features, n)
            received[p] = maps
            off += features * n
    return received, sent


def _global(rank: int, group: Any) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


# -- class windows to rank 0 ------------------------------------------------------------------
def _message_bytes(part: Partition, classes: int, probabilities: bool) -> int:
    h, w = max(part.row_sizes), max(part.col_sizes)
    return _HEADER * 8 + h * w + (classes * h * w * 4 if probabilities else 0)


class _RemoteSink:
    """Stands in for the background writer on ranks > 0: each decoded window goes to rank 0."""

    def __init__(self, msg_bytes: int, probabilities: bool, group: Any) -> None:
        self.msg_bytes = msg_bytes
        self.wants_probabilities = probabilities
        self.group = group
        self.pending: collections.deque = collections.deque()
        self.bytes_sent = 0

    def put(self, cell: Subimage, classes: np.ndarray, probs: np.ndarray | None) -> None:
        buf = np.zeros(self.msg_bytes, np.uint8)
        h, w = classes.shape
        buf[: _HEADER * 8] = np.array([cell.row, cell.col, probs is not None], np.int64).view(
            np.uint8
        )
        o = _HEADER * 8
        buf[o : o + h * w] = classes.ravel()
        if probs is not None and self.wants_probabilities:
            o += h * w
            raw = np.ascontiguousarray(probs, np.float32).view(np.uint8).ravel()
            buf[o : o + raw.size] = raw
        try:
            work = dist.isend(torch.from_numpy(buf), _global(0, self.group), self.group, OUTPUT_TAG)
            self.pending.append((work, buf))
            self.bytes_sent += buf.nbytes
            while len(self.pending) > SENDS_IN_FLIGHT:
                self.pending.popleft()[0].wait()
        except Exception as exc:  # noqa: BLE001
            raise _wrap_comm_error("sending class windows to rank 0", exc) from exc

    def flush(self) -> None:
        try:
            while self.pending:
                self.pending.popleft()[0].wait()
        except Exception as exc:  # noqa: BLE001
            raise _wrap_comm_error("sending class windows to rank 0", exc) from exc


class _Receiver(threading.Thread):
    """Rank 0: receives the other ranks' windows from any source, in any order, and hands them
    to the background writer. The only thread using the process group while it runs."""

    def __init__(self, part, expected, msg_bytes, classes, sink, group) -> None:
        super().__init__(daemon=True)
        self.part, self.expected, self.msg_bytes = part, expected, msg_bytes
        self.classes, self.sink, self.group = classes, sink, group
        self.depth = int(max(2, min(64, RECV_BYTES_IN_FLIGHT // msg_bytes)))
        self.received = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            posted: collections.deque = collections.deque()
            to_post = self.expected
            while to_post and len(posted) < self.depth:
                posted.append(self._post())
                to_post -= 1
            while posted:
                work, buf = posted.popleft()
                work.wait()
                self._deliver(buf.numpy())
                self.received += 1
                if to_post:
                    posted.append(self._post())
                    to_post -= 1
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            self.error = exc

    def _post(self):
        buf = torch.empty(self.msg_bytes, dtype=torch.uint8)
        return dist.irecv(buf, None, self.group, OUTPUT_TAG), buf

    def _deliver(self, buf: np.ndarray) -> None:
        row, col, has_probs = (int(v) for v in buf[: _HEADER * 8].view(np.int64))
        cell = _cell_of(self.part, (row, col))
        h = min(cell.height, self.sink.height - cell.row_off)
        w = min(cell.width, self.sink.width - cell.col_off)
        o = _HEADER * 8
        classes = buf[o : o + h * w].reshape(h, w).copy()
        probs = None
        if has_probs and self.sink.wants_probabilities:
            o += h * w
            n = self.classes * h * w * 4
            probs = buf[o : o + n].view(np.float32).reshape(self.classes, h, w).copy()
        self.sink.put(cell, classes, probs)


class _SizedWriter(_BackgroundWriter):
    """The background writer, knowing the scene size (to clip received windows)."""

    def __init__(self, writers: dict[str, Any], num_classes: int, height: int, width: int):
        super().__init__(writers, num_classes)
        self.height, self.width = height, width


# -- one scene over all ranks -----------------------------------------------------------------
@dataclass
class DistributedSegmentResult(SegmentResult):
    ranks: int = 1
    halo_bytes_sent: list[int] = field(default_factory=list)
    output_bytes_sent: list[int] = field(default_factory=list)
    rank_peak_rss_mb: list[float] = field(default_factory=list)

    def summary(self) -> str:
        mode = "with communication" if self.communicated else "independent subimages (C=N)"
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


def segment_distributed(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model: SegmentationModel | str | os.PathLike,
    *,
    bands: Sequence[int] | None = None,
    subimage_size: int | None = None,
    device: str | None = None,
    gpus: int | None = None,
    precision: str = "fp32",
    probabilities: str | os.PathLike | None = None,
    confidence: str | os.PathLike | None = None,
    cog: bool = False,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    store_max_ram_bytes: int = STORE_MAX_RAM_BYTES,
    comm_tile_cells: int = COMM_TILE_CELLS,
    scratch: str | os.PathLike | None = None,
    group: Any = None,
) -> SegmentResult:
    """`streaming.segment`, with the scene's subimages spread over the ranks of `group`.

    Every rank of the group calls it with the same arguments; the output equals the
    single-process output of the same checkpoint and grid. Only rank 0 writes (and only its
    `progress` and `cancel` are used: "encode" and "communicate" count rank 0's own cells,
    "decode" counts windows written from all ranks). Without a process group (or with one
    rank) this is `streaming.segment`.
    """
    rank, world = rank_and_world(group)
    if world == 1:
        return streaming.segment(
            src,
            dst,
            model,
            bands=bands,
            subimage_size=subimage_size,
            device=device,
            gpus=gpus,
            precision=precision,
            probabilities=probabilities,
            confidence=confidence,
            cog=cog,
            overwrite=overwrite,
            progress=progress,
            cancel=cancel,
            store_max_ram_bytes=store_max_ram_bytes,
            comm_tile_cells=comm_tile_cells,
            scratch=scratch,
        )
    t0 = time.perf_counter()
    if rank != 0:
        progress = cancel = None
    source, writers, error = None, {}, None
    try:
        if gpus is not None:
            raise GeodduError("--gpus does not apply under torchrun: one device per rank")
        dev = resolve_device(device, ONE_DEVICE_PER_RANK)
        if not isinstance(model, SegmentationModel):
            model = load_model(model, device=dev)
        elif model.device != dev:
            model = model.to(dev)
        model.eval()
        check_distinct_paths(
            {"output": dst, "--probabilities": probabilities, "--confidence": confidence},
            {"input raster": src},
        )
        scratch = scratch_dir(scratch)
        source = _open_source(src, bands, model)
        part = model.partition_for(source.height, source.width, subimage_size)
        if model.net.communicates:
            hs = part.row_sizes[0] // model.net.stride
            check_scratch_space(
                scratch, part.grid, (model.net.comm_features, hs, hs), store_max_ram_bytes
            )
        if rank == 0:
            writers = _open_writers(dst, source, model, overwrite, cog, probabilities, confidence)
    except BaseException as exc:  # noqa: BLE001 - agreed below, so every rank stops together
        error = exc
    try:
        agree(error, group)
    except BaseException:
        for w in writers.values():
            w.abort()
        if source is not None:
            source.close()
        raise
    net = model.net
    own = balanced_blocks(part.subimages(), world)[rank]
    run = _Run(source, part, [model], precision, progress, cancel)
    num_classes = len(model.classes)
    wants_probs = probabilities is not None or confidence is not None
    wants_probs = _broadcast(wants_probs, group)
    msg_bytes = _message_bytes(part, num_classes, wants_probs)
    stores: list[MapStore] = []
    halo_sent = 0
    sink: Any
    try:
        communicated = None
        if net.communicates:
            hs = part.row_sizes[0] // net.stride
            shape = (net.comm_features, hs, hs)
            encoded = MapStore(part.grid, shape, store_max_ram_bytes, scratch)
            stores.append(encoded)
            run.over_cells(
                "encode", lambda ctx, c, raw, ok: _encode(ctx, c, raw, ok, encoded), cells=own
            )
            plan = halo_plan(owner_grid(part, world), rank, hs, net.comm_halo)
            halos, halo_sent = exchange_halos(plan, net.comm_features, hs, encoded.get, group)
            owned = {c.index for c in own}

            def get_maps(index: tuple[int, int]) -> np.ndarray:
                if index in owned:
                    return encoded.get(index)
                return halos[index]  # a KeyError here would be a bug in the halo plan

            communicated = MapStore(part.grid, shape, store_max_ram_bytes, scratch)
            stores.append(communicated)
            tiles = run_tiles(own, max(1, comm_tile_cells // hs))
            communicate_tiles(run, model, tiles, part.grid, hs, get_maps, communicated.put)
            encoded.close()
            del halos
        if rank == 0:
            sink = _SizedWriter(writers, num_classes, source.height, source.width)
            with sink:
                receiver = _Receiver(
                    part, len(part) - len(own), msg_bytes, num_classes, sink, group
                )
                receiver.start()
                decode_total = len(part)
                run.progress = _globalised(
                    progress, "decode", lambda: receiver.received, decode_total
                )
                run.over_cells(
                    "decode",
                    lambda ctx, c, raw, ok: _decode(ctx, c, raw, ok, communicated, sink),
                    cells=own,
                )
                while receiver.is_alive():
                    receiver.join(0.1)
                    run.report("decode", 0, decode_total)
                    run.check_cancel()
                if receiver.error is not None:
                    raise _wrap_comm_error("receiving class windows", receiver.error)
                stats = _gather_stats(run, halo_sent, 0, group)
            # leaving the block above closed the writers: overviews built, output committed
        else:
            sink = _RemoteSink(msg_bytes, wants_probs, group)
            run.over_cells(
                "decode",
                lambda ctx, c, raw, ok: _decode(ctx, c, raw, ok, communicated, sink),
                cells=own,
            )
            sink.flush()
            stats = _gather_stats(run, halo_sent, sink.bytes_sent, group)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    finally:
        for s in stores:
            s.close()
        source.close()
    return DistributedSegmentResult(
        output=Path(dst),
        width=source.width,
        height=source.height,
        subimages=len(part),
        skipped=sum(s["skipped"] for s in stats),
        communicated=net.communicates,
        devices=[s["device"] for s in stats],
        seconds=time.perf_counter() - t0,
        peak_rss_mb=max(s["rss"] for s in stats),
        encoder_runs=sum(s["encoder_runs"] for s in stats),
        map_store_on_disk=any(s.on_disk for s in stores),
        extra_outputs=[Path(p) for p in (probabilities, confidence) if p is not None],
        ranks=world,
        halo_bytes_sent=[s["halo"] for s in stats],
        output_bytes_sent=[s["out"] for s in stats],
        rank_peak_rss_mb=[s["rss"] for s in stats],
    )


def _broadcast(value: Any, group: Any) -> Any:
    box = [value]
    dist.broadcast_object_list(box, src=_global(0, group), group=group)
    return box[0]


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


def _gather_stats(run: _Run, halo: int, out: int, group: Any) -> list[dict[str, Any]]:
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
        raise _wrap_comm_error("gathering the ranks' statistics", exc) from exc
    return gathered


# -- many scenes ------------------------------------------------------------------------------
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
    outs = [Path(output_dir) / output_name(s) for s in sources]
    seen: dict[Path, str] = {}
    for s, o in zip(sources, outs, strict=True):
        if o in seen:
            raise GeodduError(f"{seen[o]} and {s} would both be written to {o}")
        seen[o] = s
    return outs


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
    model: SegmentationModel | str | os.PathLike,
    *,
    skip_existing: bool = False,
    overwrite: bool = False,
    spatial_factor: float = 1.0,
    progress: ProgressFn | None = None,
    on_scene: Callable[[SceneRecord], None] | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    **options: Any,
) -> BatchResult:
    """Segment (src, dst) pairs over the ranks of the default group (or alone without one).

    Every output is atomic, so a killed batch leaves finished scenes complete and the rest
    absent; a rerun with `skip_existing` does only what is missing. A scene that cannot be
    read or segmented (a GeodduError) is reported as failed and the batch goes on. `progress`
    and `on_scene` are used on rank 0 only (on_scene: each scene rank 0 finished).
    `timeout_s` bounds how long a rank may go without progress before the job is ended.
    """
    t0 = time.perf_counter()
    rank, world = rank_and_world()
    if rank != 0:
        progress = on_scene = None
    dsts = [str(d) for _, d in jobs]
    device = options.pop("device", None)
    error, dev = None, None
    try:
        if options.get("gpus") is not None and world > 1:
            raise GeodduError("--gpus does not apply under torchrun: one device per rank")
        if world > 1:
            dev = resolve_device(device, ONE_DEVICE_PER_RANK)
        if not isinstance(model, SegmentationModel):
            model = load_model(model, device=dev or "cpu")
        # Every rank probes a strided share of the scenes: sizes for the assignment, and
        # whether the output exists (on this rank's disk: hosts need not share one).
        probes = [_probe(s, d) if k % world == rank else None for k, (s, d) in enumerate(jobs)]
        exists = [Path(d).exists() for d in dsts]
    except BaseException as exc:  # noqa: BLE001
        error = exc
    if world > 1:
        agree(error, None)
        probes, exists = _merge_probes(probes, exists)
        token = _broadcast(uuid.uuid4().hex, None)
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
    model_options = dict(options, device=device)
    if world > 1:
        model_options.pop("gpus", None)  # checked above: one device per rank

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
        run = segment_distributed if together else streaming.segment
        try:
            res = run(
                rec.src, rec.output, model, overwrite=overwrite, progress=tick, **model_options
            )
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


# -- the command line -------------------------------------------------------------------------
def cli_segment(
    sources: Sequence[str],
    output: str | None,
    output_dir: str | None,
    model_path: str,
    *,
    skip_existing: bool,
    overwrite: bool,
    timeout_s: float,
    quiet: bool,
    progress_format: str,
    options: dict[str, Any],
    bars: Callable[[bool], Any],
) -> int:
    """`geoddu segment` for many scenes and/or under torchrun. Returns the exit status.

    Under torchrun every rank runs this; only rank 0 prints (progress, errors every rank shares,
    the summary); an error only one rank hit is printed by that rank. `bars(quiet)` is the
    CLI's progress-bar context manager.
    """
    distributed = launched_by_torchrun()
    if distributed:
        # Under torchrun a failing peer makes the agent SIGTERM us: unwind like Ctrl-C so the
        # output's temporary files are removed.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        device = init_from_env(timeout_s)
        if options.get("device") in (None, "cuda"):
            options["device"] = str(device)  # cuda:LOCAL_RANK on GPU hosts, else the CPU
    rank, world = rank_and_world()
    emit = _json_emitter() if (progress_format == "json" and rank == 0) else None
    try:
        if world > 1:
            # Rank 0 alone expands folders and lists: hosts need not see the same files.
            jobs = many = error = None
            if rank == 0:
                try:
                    jobs, many = _jobs(sources, output, output_dir, options)
                except GeodduError as exc:
                    error = exc
            agree(error, None)
            jobs, many = _broadcast((jobs, many), None)
        else:
            jobs, many = _jobs(sources, output, output_dir, options)
        with _reporter(emit, quiet or rank != 0, bars) as progress:
            if not many:
                result: Any = segment_distributed(
                    jobs[0][0],
                    jobs[0][1],
                    model_path,
                    overwrite=overwrite,
                    progress=progress,
                    **options,
                )
            else:
                result = segment_batch(
                    jobs,
                    model_path,
                    skip_existing=skip_existing,
                    overwrite=overwrite,
                    progress=progress,
                    timeout_s=timeout_s,
                    **options,
                )
    except GeodduError as exc:
        if emit is not None:
            emit({"event": "error", "message": str(exc)})
        if rank == 0 or not isinstance(exc, AgreedError):
            prefix = f"rank {rank}: " if rank and world > 1 else ""
            print(f"Error: {prefix}{exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()
    status = 1 if isinstance(result, BatchResult) and result.failed else 0
    if rank == 0:
        if emit is not None:
            done: dict[str, Any] = {"event": "done", "summary": result.summary()}
            if isinstance(result, BatchResult):
                done["scenes"] = [s.__dict__ for s in result.scenes]
            else:
                done["output"] = str(result.output)
            emit(done)
        elif not quiet:
            if isinstance(result, BatchResult):
                for s in result.scenes:
                    print(f"[{s.status}] {s.summary or s.output}", flush=True)
            print(result.summary(), flush=True)
        for s in result.failed if isinstance(result, BatchResult) else []:
            print(f"Error: {s.summary}", file=sys.stderr, flush=True)
    return status


def _jobs(
    sources: Sequence[str], output: str | None, output_dir: str | None, options: dict[str, Any]
) -> tuple[list[tuple[str, str]], bool]:
    """(src, dst) pairs from the command line, and whether this is a batch (--output-dir)."""
    srcs = expand_sources(sources)
    if output_dir is not None:
        if output is not None:
            raise GeodduError("give either -o/--output (one scene) or --output-dir")
        if not Path(output_dir).is_dir():
            raise GeodduError(f"{output_dir}: output directory does not exist")
        if options.get("probabilities") or options.get("confidence"):
            raise GeodduError("--probabilities/--confidence need one scene with -o")
        return list(zip(srcs, map(str, batch_outputs(srcs, output_dir)), strict=True)), True
    if output is None:
        raise GeodduError("give -o/--output for one scene or --output-dir for several")
    if len(srcs) != 1:
        raise GeodduError(f"{len(srcs)} inputs: use --output-dir for several scenes")
    return [(srcs[0], output)], False


def _json_emitter() -> Callable[[dict[str, Any]], None]:
    def emit(obj: dict[str, Any]) -> None:
        sys.stderr.write(json.dumps(obj) + "\n")
        sys.stderr.flush()

    return emit


class _reporter:
    """The progress callback for this rank: JSON lines, rich bars, or nothing."""

    def __init__(self, emit, quiet: bool, bars) -> None:
        self.emit, self.quiet, self.bars, self.ctx = emit, quiet, bars, None

    def __enter__(self) -> ProgressFn | None:
        if self.emit is not None:
            emit = self.emit
            return lambda s, d, t: emit({"event": "progress", "stage": s, "done": d, "total": t})
        if self.quiet:
            return None
        self.ctx = self.bars(False)
        return self.ctx.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
