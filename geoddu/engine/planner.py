"""The whole plan of a segment job, made before any of it runs: `plan_job(request)`.

From the request, the checkpoint's description (read weights_only; no weights go into a
model) and the scene's header (no pixel is read), a :class:`JobPlan` holds everything a run
will do: the cells, the schedule and the figures that chose it, each device's steps and
reads, the progress totals, the encoder runs and the expected peak memory. The executors run
`job.plan` as it is; `geoddu segment --plan` prints it (:meth:`JobPlan.describe`,
:meth:`JobPlan.to_dict`), as dask's task graph can be looked at before it is computed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import forward_values
from ..io.gdal_cache import gdal_cache_bytes
from ..io.raster import RasterSource, open_raster
from ..parallel.devices import resolve_devices
from ..partition import Partition
from ..predictor import ModelSpec
from .mapstore import MapStore
from .memory import MemoryEstimate, estimate_memory, split_stores
from .memory_limit import fit_memory_limit
from .plan import SegmentPlan, plan_segment
from .request import SegmentRequest
from .resampling import Resampled, read_at_model_pixels
from .scene_source import scene_path
from .steps import (
    DecodeRow,
    DeviceWork,
    EncodeCell,
    Schedule,
    choose_schedule,
    device_work,
    rank_work,
)

__all__ = ["JobPlan", "SceneHeader", "model_spec", "open_scene", "plan_job", "read_area"]

@dataclass(frozen=True)
class SceneHeader:
    """What the plan knows of the scene: its header, not its pixels."""

    path: str
    width: int
    height: int
    bands: tuple[int, ...]
    dtype: str
    # --resample: the scene's own grid, the model's grid it is read on (width and height
    # above), the method and the output's grid (Resampled.to_dict).
    resampled: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class JobPlan:
    """A segment job, step by step, before it runs. `work` holds one entry per device of this
    process (or, for a torchrun rank, this rank's); `world` > 1 plans rank `rank` of `world`."""

    request: SegmentRequest
    spec: ModelSpec
    scene: SceneHeader
    cells: SegmentPlan
    schedule: Schedule
    work: tuple[DeviceWork, ...]
    memory: MemoryEstimate
    world: int = 1
    rank: int = 0

    @property
    def encoder_runs(self) -> int:
        """Encoder passes of the whole job, on every device (and rank) together."""
        return self.schedule.encoder_runs

    @property
    def heap_trimmed(self) -> str:
        """How often freed heap is handed back: "each pass" (two passes), or for the one-pass
        strips "each row" under --memory-limit, whose plan must hold however long the run is,
        else "each strip" (:func:`geoddu.engine.strips.run_strips`)."""
        if self.schedule.kind != "one-pass":
            return "each pass"
        return "each row" if self.request.memory_limit is not None else "each strip"

    @property
    def trims_each_row(self) -> bool:
        return self.heap_trimmed == "each row"

    @property
    def totals(self) -> dict[str, int]:
        """Progress totals per stage, as the run reports them. On a rank: its own cells and
        tiles, and the decoded windows of all ranks (rank 0 writes them all)."""
        n = {"encode": 0, "communicate": 0, "decode": 0}
        for w in self.work:
            for stage, k in w.totals().items():
                n[stage] += k
        if self.world > 1:
            n["decode"] = len(self.cells.decode)
        return {stage: k for stage, k in n.items() if k or stage == "decode"}

    def for_rank(self, rank: int) -> JobPlan:
        """The plan of rank `rank` of the same job."""
        return _rank_plan(self, rank)

    # -- looking at it ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON-able data (what `geoddu segment --plan --json` prints)."""
        cfg = self.spec.config
        rows, cols = self.cells.partition.grid
        out = {
            "src": self.scene.path,
            "outputs": dict(self.request.outputs),
            "model": self.request.model if isinstance(self.request.model, str) else None,
            "scene": dataclasses.asdict(self.scene) | {"bands": list(self.scene.bands)},
            "architecture": {
                "encoder": cfg["encoder"], "depth": cfg["depth"],
                "base_channels": cfg["base_channels"], "comm_features": self.spec.comm_features,
                "communicates": self.spec.communicates, "comm_halo": self.spec.comm_halo,
                "stride": self.spec.stride,
            },
            "grid": {
                "subimage_size": self.cells.partition.row_sizes[0], "rows": rows,
                "cols": cols, "encode": len(self.cells.encode),
                "decode": len(self.cells.decode), "area_of_interest": self.cells.area,
                "reach": self.cells.reach,
            },
            "schedule": {
                "kind": self.schedule.kind, "label": self.schedule.label,
                "encoder_runs": self.encoder_runs, "strip_width": self.schedule.width,
                "why": self.schedule.why,
                "heap_trimmed": self.heap_trimmed,
            },
            "devices": [_work_dict(w) for w in self.work],
            "totals": self.totals,
            "encoder_runs": self.encoder_runs,
            "memory": self.memory.to_dict(),
        }
        if self.world > 1:
            out["ranks"] = {"world": self.world, "rank": self.rank, "shares": [
                _work_dict(self.for_rank(r).work[0]) for r in range(self.world)
            ]}
        return out

    def describe(self) -> str:
        """The plan as printed by `geoddu segment --plan`."""
        d = self.to_dict()
        arch, grid, sch = d["architecture"], d["grid"], d["schedule"]
        reach = f"{grid['reach']} cell" + ("s" if grid["reach"] != 1 else "")
        comm = (f"F={arch['comm_features']} communicated (halo {arch['comm_halo']} bottleneck "
                f"px: {reach} around)" if arch["communicates"]
                else "subimages independent (no communication)")
        model = self.request.model if isinstance(self.request.model, str) else "(in memory)"
        lines = [
            f"plan: {self.scene.path} -> {self.request.output} (no pixel read, nothing written)",
            f"scene      {self.scene.width} x {self.scene.height} px, bands "
            f"{','.join(map(str, self.scene.bands))} ({self.scene.dtype})",
            *([f"resampled  {self.scene.resampled['line']}"] if self.scene.resampled else []),
            f"model      {model}: {arch['encoder']} encoder, depth {arch['depth']}, {comm}",
            f"subimages  {grid['subimage_size']} px, {grid['rows']} x {grid['cols']}: "
            f"{grid['decode']} decoded, {grid['encode']} encoded"
            + (" (area of interest)" if grid["area_of_interest"] else ""),
            f"schedule   {sch['label']}, {sch['encoder_runs']} encoder runs",
            f"  why      {sch['why']}",
            *(["  heap     freed memory handed back after each row (--memory-limit)"]
              if self.trims_each_row else []),
        ]
        if self.world > 1:
            lines.append(f"ranks      {self.world} (torchrun), each on one device:")
            lines += [f"  rank {r}   " + _work_line(w) for r, w in enumerate(d["ranks"]["shares"])]
        else:
            lines.append(f"devices    {', '.join(w.device for w in self.work)}")
            lines += [f"  {w['device']:<8} " + _work_line(w) for w in d["devices"]]
        lines.append("steps      " + ", ".join(f"{k} {v}" for k, v in d["totals"].items())
                     + " (progress totals)")
        where = f"rank {self.rank}'s process" if self.world > 1 else "this process"
        lines.append(f"memory     expected peak of {where}, by part:")
        lines += ["  " + line for line in self.memory.lines()]
        names = {"output": "class map", "--probabilities": "probabilities",
                 "--confidence": "confidence", "--vector": "polygons"}
        lines.append("outputs    " + "; ".join(f"{names[k]} {v}" for k, v in d["outputs"].items()))
        return "\n".join(lines)


def _work_dict(w: DeviceWork) -> dict[str, Any]:
    strips = [
        {"cols": list(r.strip.cols), "context": list(r.strip.context),
         "left_cached": r.strip.left_cached,
         "encodes": sum(isinstance(s, EncodeCell) for s in r.steps),
         "rows": sum(isinstance(s, DecodeRow) and bool(s.cells) for s in r.steps)}
        for r in w.strips
    ]
    return {"device": w.device, "reads": len(w.reads), "strips": strips,
            "encode_cells": len(w.cells("encode")), "tiles": len(w.tiles),
            "decode_cells": len(w.cells("decode")), "totals": w.totals()}


def _work_line(w: dict[str, Any]) -> str:
    """One device's share in a line: its strips, or its blocks of cells per pass."""
    if w["strips"]:
        spans = [f"{s['cols'][0]}-{s['cols'][1] - 1}" for s in w["strips"]]
        shown = ", ".join(spans[:4]) + (f", ... ({len(spans)} strips)" if len(spans) > 4 else "")
        t = w["totals"]
        return (f"strips of columns {shown}: reads {w['reads']} windows, encodes "
                f"{t['encode']}, communicates {t['communicate']} rows, decodes {t['decode']}")
    parts = [f"reads {w['reads']} windows"]
    if w["encode_cells"]:
        parts.append(f"encodes {w['encode_cells']} cells")
    if w["tiles"]:
        parts.append(f"communicates {w['tiles']} tile(s)")
    parts.append(f"decodes {w['decode_cells']} cells")
    return ", ".join(parts)


# -- making it ----------------------------------------------------------------------------------
def model_spec(model: Any) -> ModelSpec:
    """The spec of a loaded model, or of a checkpoint path (read, checked, no model built)."""
    if hasattr(model, "spec"):
        return model.spec
    from ..checkpoint import load_checkpoint

    return ModelSpec.from_checkpoint(load_checkpoint(model))


def model_metadata(model: Any) -> Mapping[str, Any]:
    """A loaded model's checkpoint dict, or a checkpoint path's (read, checked, no model
    built): its card and "data" record say the pixel size it was trained at."""
    if hasattr(model, "metadata"):
        return model.metadata
    from ..checkpoint import load_checkpoint

    return load_checkpoint(model)


def open_scene(src: str, bands: tuple[int, ...] | None, spec: ModelSpec) -> RasterSource:
    """The scene with the bands the model takes (GDAL's band and mask rules); only its header
    is read."""
    with open_raster(src) as scene:
        chosen = spec.scene_bands(scene, bands)
    source = open_raster(src, bands=chosen)
    try:
        spec.check_bands(source.count)
    except BaseException:
        source.close()
        raise
    return source


def read_area(request: SegmentRequest, source: RasterSource) -> Any:
    """The area of interest in the scene's CRS (a shapely geometry), or None."""
    if request.aoi is None:
        return None
    from rasterio.transform import array_bounds

    from ..io.vector import aoi_geometry

    return aoi_geometry(
        request.aoi,
        source.crs,
        array_bounds(source.height, source.width, source.transform),
        layer=request.aoi_layer,
        where=request.aoi_where,
    )


def touched_cells(area: Any, partition: Partition, transform: Any) -> list[tuple[int, int]]:
    """The subimages whose footprint meets `area` (in the scene's CRS)."""
    import shapely
    from rasterio.windows import Window, bounds

    cells = partition.subimages()
    boxes = [
        shapely.box(*bounds(Window(c.col_off, c.row_off, c.width, c.height), transform))
        for c in cells
    ]
    hit = shapely.intersects(np.array(boxes, dtype=object), area)
    return [c.index for c, h in zip(cells, hit, strict=True) if h]


def concrete_precision(request: SegmentRequest, device: Any) -> SegmentRequest:
    """`request` with ``--precision auto`` resolved for `device` by the cached probe
    (:func:`geoddu.precision_probe.choose_precision`); any other request as it is."""
    if request.precision != "auto":
        return request
    from ..precision_probe import resolve_precision

    return dataclasses.replace(request, precision=resolve_precision("auto", device))


def plan_job(
    request: SegmentRequest,
    devices: Sequence[str] | None = None,
    *,
    world: int = 1,
    rank: int = 0,
) -> JobPlan:
    """The plan of `request`, made without running anything: the checkpoint is read (not
    loaded into a model), the scene's header and the area of interest are read (no pixel).
    `devices`: this process's devices (None: the request's). `world` > 1: the plan of torchrun
    rank `rank`, on the request's one device."""
    if request.precision == "auto":
        device = devices[0] if devices else resolve_devices(request.device, request.gpus)[0]
        request = concrete_precision(request, device)
    metadata = model_metadata(request.model)
    spec = request.model.spec if hasattr(request.model, "spec") else \
        ModelSpec.from_checkpoint(metadata)
    with ExitStack() as stack:
        path, bands = stack.enter_context(scene_path(request, len(spec.bands)))
        source = open_scene(path, bands, spec)
        source, resampled = read_at_model_pixels(request, metadata, source, stack,
                                                 beside_output=False)
        with source:
            return make_plan(request, spec, source, read_area(request, source), devices, world,
                             rank, resampled=resampled)


def make_plan(
    request: SegmentRequest,
    spec: ModelSpec,
    source: RasterSource,
    area: Any,
    devices: Sequence[str] | None = None,
    world: int = 1,
    rank: int = 0,
    *,
    resampled: Resampled | None = None,
) -> JobPlan:
    """The plan, from the model's spec, the open scene (with --resample: the warped one, read
    on `resampled.model`) and its area of interest; under `request.memory_limit`, the first
    plan that fits it (:mod:`geoddu.engine.memory_limit`)."""

    def plan(r: SegmentRequest) -> JobPlan:
        return _make_plan(r, spec, source, area, devices, world, rank, resampled=resampled)

    return fit_memory_limit(plan(request), plan)


def _make_plan(
    request: SegmentRequest,
    spec: ModelSpec,
    source: RasterSource,
    area: Any,
    devices: Sequence[str] | None = None,
    world: int = 1,
    rank: int = 0,
    *,
    resampled: Resampled | None = None,
) -> JobPlan:
    if devices is None:
        from ..parallel.devices import resolve_devices

        devices = [str(d) for d in resolve_devices(request.device, request.gpus)]
    part = spec.partition_for(source.height, source.width, request.subimage_size)
    touched = None if area is None else touched_cells(area, part, source.transform)
    cells = plan_segment(part, stride=spec.stride, communicates=spec.communicates,
                         comm_halo=spec.comm_halo, tile_cells=request.comm_tile_cells,
                         touched=touched)
    scene = SceneHeader(request.scene_label, source.width, source.height, tuple(source.bands),
                        str(source.dtype), None if resampled is None else
                        {**resampled.to_dict(), "line": resampled.describe()})
    skip_bytes = spec.skip_bytes(part.row_sizes[0], request.precision)
    if world > 1 and spec.communicates:
        # A rank's strip would need its neighbours' rows as they are encoded; ranks exchange
        # the encoded halo once, between two passes (docs/distributed.md).
        schedule = Schedule("two-pass", len(cells.encode) + len(cells.decode),
                            why="torchrun ranks exchange the bottleneck halos between two passes")
    else:
        schedule = choose_schedule(cells, len(devices), skip_bytes, request.skip_budget_bytes,
                                   request.strip_cells, request.schedule if world == 1 else "auto",
                                   request.resume)
    plan = JobPlan(request, spec, scene, cells, schedule, (), MemoryEstimate(()), world, rank)
    if world > 1:
        return _rank_plan(plan, rank, devices[0])
    return _with_work(plan, device_work(cells, schedule, devices))


def _rank_plan(plan: JobPlan, rank: int, device: str | None = None) -> JobPlan:
    device = device or plan.work[0].device
    plan = dataclasses.replace(plan, rank=rank)
    return _with_work(plan, (rank_work(plan.cells, rank, plan.world, device),))


def _with_work(plan: JobPlan, work: tuple[DeviceWork, ...]) -> JobPlan:
    """`plan` with the devices' work, and the expected peak of the process that runs it."""
    return dataclasses.replace(plan, work=work, memory=_memory(plan, work))


def _memory(plan: JobPlan, work: Sequence[DeviceWork]) -> MemoryEstimate:
    """The expected peak of the process that runs `work` (:mod:`geoddu.engine.memory`)."""
    request, spec, cells = plan.request, plan.spec, plan.cells
    size, c, h = cells.partition.row_sizes[0], cells.cell, spec.comm_halo
    rows, cols = cells.partition.grid
    elem = 4 if request.precision == "fp32" else 2
    classes = spec.config["num_classes"]
    probs = 4 * classes * size * size if request.wants_probabilities else 0
    record = spec.comm_features * c * c * 4  # one cell's bottleneck maps, float32

    def tile(r: int, k: int) -> int:  # a tile of r x k cells and its halo, in and out
        return 2 * spec.comm_features * 4 * min(rows * c, r * c + 2 * h) * min(cols * c,
                                                                              k * c + 2 * h)

    one_pass = cells.communicates and plan.schedule.kind == "one-pass"
    ram = scratch = tiles = 0
    if one_pass:  # a strip's live rows of maps, context columns included; one row's tile
        width = plan.schedule.width
        ram = (cells.reach + 1) * (width + 2 * cells.reach) * record * len(work)
        if width < cols:  # the left context a strip was handed and the one it hands on
            ram += 2 * cells.reach * rows * record * len(work)
        tiles = tile(1, width)
    elif cells.communicates:  # the two stores exist together while the tiles run
        store = MapStore.bytes_for(cells.partition.grid, (spec.comm_features, c, c))
        ram, scratch = split_stores(store, 2, request.store_max_ram_bytes)
        if plan.world > 1 and ram:  # a rank's stores hold its own cells and its halo
            ram = 2 * record * len(work[0].cells("encode"))
        step = max(1, request.comm_tile_cells // c)
        tiles = tile(min(rows, step), min(cols, step))
    window = size * size * (len(plan.scene.bands) * np.dtype(plan.scene.dtype).itemsize + 1)
    return estimate_memory(
        devices=[w.device for w in work],
        live_cells=(cells.reach + 1) * plan.schedule.width if one_pass else 1,
        # a cell's skips, and the valid mask kept with them
        cell_bytes=spec.skip_bytes(size, request.precision) + size * size,
        # the argmax's int64 indices and the softmax beside the activations
        forward_bytes=forward_values(spec.config, size) * elem + 8 * size * size + probs,
        weight_bytes=spec.weight_bytes,
        window_bytes=window,
        output_bytes=size * size + probs,
        maps_bytes=ram,
        tile_bytes=tiles,
        scratch_bytes=scratch,
        cache_bytes=min(gdal_cache_bytes(), _io_bytes(plan, probs)),
    )


def _io_bytes(plan: JobPlan, probs_per_window: int) -> int:
    """What GDAL's block cache could hold at most: the scene's bands and the outputs."""
    px = plan.scene.width * plan.scene.height
    size = plan.cells.partition.row_sizes[0]
    bands = len(plan.scene.bands) * np.dtype(plan.scene.dtype).itemsize
    return px * (bands + 1) + px * probs_per_window // (size * size)
