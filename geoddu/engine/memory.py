"""The expected peak memory of a segment job, part by part, from figures known before it runs.

Pure arithmetic over what the plan knows (the schedule's live cells, one subimage's skips and
activations from `geoddu.analysis`, the window sizes, the store budget). Each part says where
it lives: "host" (this process's RAM, which is where a CPU device computes too) or a CUDA
device. The constants below were measured with torch 2.13's CPU build on Linux; how close the
sum comes to measured peak RSS is in docs/architecture.md (`benchmarks/plan_memory.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..sizes import human_bytes

__all__ = [
    "READ_AHEAD",
    "WRITE_QUEUE",
    "MemoryEstimate",
    "MemoryPart",
    "estimate_memory",
    "human_bytes",
    "split_stores",
]

# Windows a device's prefetcher reads ahead (the executor's queue depth).
READ_AHEAD = 2
# Decoded windows waiting for the background writer (its queue's size).
WRITE_QUEUE = 8
# Python, torch, rasterio/GDAL and geoddu's engine imported, nothing loaded (measured 243 MB).
RUNTIME_BYTES = 245 * 2**20
# A model loaded for the CPU: the checkpoint's tensors (kept with the model), the fused copy
# and oneDNN's packed copy, plus the traced graphs (measured: 14 MB for a model of a few
# thousand weights, 47 MB for DDU-Net(4,64,Y)'s 9 MB).
CPU_WEIGHT_COPIES = 3
CPU_MODEL_SETUP_BYTES = 15 * 2**20
# What any run adds whatever its size: its threads, GDAL's drivers, the kernels' scratch
# (measured: 38 MB with the smallest model).
RUN_OVERHEAD_BYTES = 35 * 2**20
# Heap freed by one subimage's forward that stays resident while the next allocates (glibc
# serves the next tensors from the heap, where holes remain): measured 0.6 to 0.7 times one
# subimage's skips and activations, from the second subimage on.
HEAP_SLACK = 0.6
# The one-pass schedule trims the heap once per strip, not per row (trimming each row cost 8-9%
# of a run in page faults): the freed rows' holes stay resident until the strip ends. Measured
# 0.34 (fp32) to 0.43 (bf16) times the live skips, base 16, 512² subimages, 4096² scene.
ROW_SLACK = 0.4


@dataclass(frozen=True)
class MemoryPart:
    """One part of the peak: `name`, its size, and where it lives ("host" or a CUDA device)."""

    name: str
    bytes: int
    where: str = "host"


@dataclass(frozen=True)
class MemoryEstimate:
    """The parts alive together at the peak, and the scratch disk the bottleneck stores take
    beyond the RAM budget (never memory)."""

    parts: tuple[MemoryPart, ...]
    scratch_bytes: int = 0

    @property
    def places(self) -> list[str]:
        """"host" first, then each device with parts on it."""
        return ["host", *sorted({p.where for p in self.parts} - {"host"})]

    def peak(self, where: str = "host") -> int:
        return sum(p.bytes for p in self.parts if p.where == where)

    def to_dict(self) -> dict[str, object]:
        return {
            "peak_bytes": {w: self.peak(w) for w in self.places},
            "parts": [{"name": p.name, "bytes": p.bytes, "where": p.where} for p in self.parts],
            "scratch_bytes": self.scratch_bytes,
        }

    def lines(self) -> list[str]:
        """The estimate as printed: one line per place, its parts below it."""
        out = []
        for where in self.places:
            out.append(f"{where}: {human_bytes(self.peak(where))}")
            width = max(len(p.name) for p in self.parts)
            out += [f"  {p.name:<{width}}  {human_bytes(p.bytes):>9}"
                    for p in self.parts if p.where == where and p.bytes]
        if self.scratch_bytes:
            out.append(f"scratch disk (bottleneck stores): {human_bytes(self.scratch_bytes)}")
        return out


def split_stores(store_bytes: int, stores: int, max_ram_bytes: int) -> tuple[int, int]:
    """(RAM, scratch disk) of `stores` bottleneck stores of `store_bytes` each: a store above
    `max_ram_bytes` is a scratch file (`geoddu.engine.mapstore.MapStore`)."""
    on_disk = store_bytes > max_ram_bytes
    return (0, stores * store_bytes) if on_disk else (stores * store_bytes, 0)


def estimate_memory(
    *,
    devices: Sequence[str],
    live_cells: int,
    cell_bytes: int,
    forward_bytes: int,
    weight_bytes: int,
    window_bytes: int,
    output_bytes: int,
    maps_bytes: int,
    tile_bytes: int,
    scratch_bytes: int,
    cache_bytes: int,
    runtime_bytes: int = RUNTIME_BYTES,
) -> MemoryEstimate:
    """The peak of one process running `devices` (device names, one per planned device).

    `live_cells` x `cell_bytes`: the skips a device keeps at most (a one-pass strip's live
    rows; one cell in two passes). `forward_bytes`: one subimage's activations beyond its
    skips. `window_bytes`: one read window with its mask. `output_bytes`: one decoded window
    as handed to the writer. `maps_bytes`: bottleneck maps in RAM (a strip's live rows, or the
    stores below their budget). `tile_bytes`: the largest communication tile, in and out, on
    the first device. `cache_bytes`: GDAL's block cache.
    """
    cpus = sum(d.startswith("cpu") for d in devices)
    parts = [
        MemoryPart("runtime (Python, torch, GDAL)", runtime_bytes),
        MemoryPart("threads, drivers, scratch", RUN_OVERHEAD_BYTES),
        MemoryPart("model weights", max(1, cpus) * (CPU_WEIGHT_COPIES * weight_bytes
                                                    + CPU_MODEL_SETUP_BYTES)),
        MemoryPart("read-ahead windows", len(devices) * (READ_AHEAD + 2) * window_bytes),
        MemoryPart("writer queue", (WRITE_QUEUE + 2) * output_bytes),
        MemoryPart("GDAL block cache", cache_bytes),
        MemoryPart("bottleneck maps in RAM", maps_bytes),
    ]
    places = ["host" if d.startswith("cpu") else d for d in devices]
    for where in dict.fromkeys(places):
        n = places.count(where)
        if where != "host":
            parts.append(MemoryPart("model weights", n * weight_bytes, where))
        parts.append(MemoryPart("live skips", n * live_cells * cell_bytes, where))
        parts.append(MemoryPart("activations of one subimage", n * forward_bytes, where))
        slack = HEAP_SLACK * (cell_bytes + forward_bytes) if where == "host" else 0
        if where == "host" and live_cells > 1:
            slack += ROW_SLACK * live_cells * cell_bytes
        parts.append(MemoryPart("heap slack", int(n * slack), where))
    parts.append(MemoryPart("communication tile", tile_bytes, places[0] if places else "host"))
    return MemoryEstimate(_merged(parts), scratch_bytes)


def _merged(parts: list[MemoryPart]) -> tuple[MemoryPart, ...]:
    """Parts of the same name and place added up, in first-seen order."""
    sums: dict[tuple[str, str], int] = {}
    for p in parts:
        sums[(p.name, p.where)] = sums.get((p.name, p.where), 0) + p.bytes
    return tuple(MemoryPart(name, n, where) for (name, where), n in sums.items())


