"""``vectorize --memory-limit``: windows and batches small enough for a hard limit, a refusal
before any work when nothing fits, and a guard for what no plan can know in advance.

What a run holds (measured, ``docs/vectorize.md``, "Memory"):

* what the process holds when the run starts (libraries; in ``segment --vector`` the model
  too), plus what the run loads on top (GDAL's drivers, the layer writer);
* one window: up to :data:`WINDOW_PIXEL_BYTES` per pixel on the worst map (about two pixels
  per region: GDAL's polygons of the window, their shapely copies, the class arrays);
* GDAL's block cache, which never holds more than one row of the map's blocks (the map is
  reopened after each window row);
* the complete polygons waiting to be written, :data:`BATCH_POLYGON_BYTES` each;
* with GDAL's sieve, :data:`GDAL_SIEVE_REGION_BYTES` per region of the whole map, before the
  windows are polygonised. The staging pass counts an upper bound of the regions (pixels whose
  upper and left neighbours hold another class), so the sieve is refused before it runs when
  that bound cannot fit.

The plan halves the window (down to :data:`MIN_WINDOW`) and then the batch until the estimate
times :data:`MARGIN` fits, or refuses naming the smallest limit that would do. What grows with
the map's content rather than with the plan, the regions open across window borders, geoddu's
own sieve (~430 bytes per region) and the layer held for ``--simplify``, is watched instead:
:class:`MemoryGuard` reads the resident memory after every window and stops the run with one
line, nothing written, when it passes the limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geoddu.errors import GeodduError
from geoddu.io.gdal_cache import gdal_cache_bytes
from geoddu.resources import current_rss_mb
from geoddu.sizes import MEMORY_MARGIN as MARGIN
from geoddu.sizes import human_bytes, parse_bytes

__all__ = ["MemoryGuard", "VectorizePlan", "plan_vectorize", "region_starts"]

# Loaded by the run on top of what the process holds when it starts: 28 MB measured (a
# 256^2 map in 64 px windows: 153 MB at entry, 181 MB peak, in a fresh `geoddu vectorize`).
RUN_LOAD_BYTES = 32 * 2**20
# What a fresh `geoddu vectorize` process holds at entry (153 MB measured), where this
# process's own resident memory cannot be read.
FRESH_PROCESS_BYTES = 160 * 2**20
# Per pixel of a window, on the worst map (a 2048^2 map of ~2 px per region, windows of 512,
# 1024 and 2048 px: 200, 211 and 207 bytes per pixel above the entry).
WINDOW_PIXEL_BYTES = 210
# The same with geoddu's own sieve, whose first pass also pairs every region with its
# neighbours (the same map: 135 MB taken by one 512 px window's step, about 520 bytes/px).
WINDOW_PIXEL_BYTES_SMALLEST_FIRST = 600
# Per complete polygon waiting to be written (its map coordinates and WKB).
BATCH_POLYGON_BYTES = 2048
# Per region of the whole map in GDALSieveFilter (GDAL's documentation: ~24 bytes).
GDAL_SIEVE_REGION_BYTES = 24
# Per window-local region in the decision step of geoddu's own sieve (a 1024^2 map of ~420,000
# regions: 189 MB above the end of its first pass, ~450 bytes each).
SMALLEST_FIRST_REGION_BYTES = 480
MIN_WINDOW = 64
MIN_BATCH = 100
# Added to the limit a refusal names: what the process holds at the start is measured, and it
# differs between runs of one command by a few MB (207.1 against 205.8 MB needed), so a limit
# named to the megabyte was refused by the next run.
NAMED_SLACK = 8 * 2**20


@dataclass(frozen=True)
class VectorizePlan:
    """The window and batch a limited run uses, and the estimate that made it fit."""

    limit: int
    window_size: int
    batch_size: int
    held: int  # what the process holds at the start, plus what the run loads
    parts: tuple[tuple[str, int], ...]

    @property
    def estimate(self) -> int:
        return self.held + sum(b for _, b in self.parts)

    def fits(self, extra: int = 0) -> bool:
        return (self.held + max(extra, sum(b for _, b in self.parts))) * MARGIN <= self.limit


def _parts(window: int, batch: int, width: int, block_rows: int, itemsize: int,
           per_pixel: int) -> tuple[tuple[str, int], ...]:
    cache_rows = max(window, block_rows)
    return (("one window", window * window * per_pixel),
            ("GDAL's block cache", min(gdal_cache_bytes(), cache_rows * width * itemsize)),
            ("polygons waiting to be written", batch * BATCH_POLYGON_BYTES))


def _named(need: float) -> int:
    """The limit a refusal names, in MiB: the need, plus what a rerun may hold more."""
    return -(-(int(need) + NAMED_SLACK) // 2**20)


def held_now() -> int:
    """What this process holds now (or a fresh process's figure), plus what a run loads."""
    rss = int(current_rss_mb() * 2**20)
    return (rss or FRESH_PROCESS_BYTES) + RUN_LOAD_BYTES


def plan_vectorize(limit: int | str, *, width: int, block_rows: int, itemsize: int,
                   window_size: int, batch_size: int, sieve: str | None = None,
                   held: int | None = None) -> VectorizePlan:
    """The largest window (up to ``window_size``), then batch, whose estimate fits ``limit``;
    a :class:`GeodduError` naming the smallest workable limit when none does. ``sieve``: the
    sieve that runs, if one does."""
    limit = parse_bytes(limit)
    per_pixel = (WINDOW_PIXEL_BYTES_SMALLEST_FIRST if sieve == "smallest-first"
                 else WINDOW_PIXEL_BYTES)
    held = held_now() if held is None else held
    window, batch = window_size, batch_size
    while True:
        plan = VectorizePlan(limit, window, batch, held,
                             _parts(window, batch, width, block_rows, itemsize, per_pixel))
        if plan.fits():
            return plan
        if window > MIN_WINDOW:
            window = max(MIN_WINDOW, window // 2)
        elif batch > MIN_BATCH:
            batch = max(MIN_BATCH, batch // 10)
        else:
            break
    need = plan.estimate * MARGIN
    biggest = max(plan.parts, key=lambda p: p[1])
    raise GeodduError(
        f"--memory-limit {human_bytes(limit)}: vectorize needs at least {human_bytes(need)} "
        f"(windows of {window} px; {human_bytes(held)} held by the process and its libraries, "
        f"largest other part: {biggest[0]}, {human_bytes(biggest[1])}); give --memory-limit "
        f"{_named(need)}M or more"
    )


def check_gdal_sieve(plan: VectorizePlan, regions: int) -> None:
    """Refuse GDAL's sieve before it runs when its table for up to ``regions`` regions (an
    upper bound) cannot fit beside what the process holds."""
    table = regions * GDAL_SIEVE_REGION_BYTES
    if plan.fits(table):
        return
    need = (plan.held + max(table, sum(b for _, b in plan.parts))) * MARGIN
    _refuse(plan, f"GDAL's sieve could hold up to {regions} regions ({human_bytes(table)}), "
                  "which does not fit", need)


def check_smallest_first(plan: VectorizePlan, regions: int) -> None:
    """Refuse the decision step of geoddu's own sieve before it starts when its tables for
    ``regions`` window-local regions do not fit beside what the process holds now."""
    rss = int(current_rss_mb() * 2**20) or plan.held
    table = regions * SMALLEST_FIRST_REGION_BYTES
    if (rss + table) * MARGIN <= plan.limit:
        return
    _refuse(plan, f"this map needs more: geoddu's sieve holds {regions} regions "
                  f"({human_bytes(table)}) beside {human_bytes(rss)}", (rss + table) * MARGIN,
            ", or use GDAL's sieve (--sieve gdal, ~24 bytes per region)")


def _refuse(plan: VectorizePlan, what: str, need: float, hint: str = "") -> None:
    raise GeodduError(
        f"--memory-limit {human_bytes(plan.limit)}: {what}; nothing was written; give "
        f"--memory-limit {_named(need)}M or more{hint}"
    )


def region_starts(cls: np.ndarray, none: int) -> int:
    """An upper bound of the 4-connected regions in ``cls``: every region's first pixel in
    raster order has no pixel of its class above it or to its left (the window's own edges
    count as other classes, which only raises the bound)."""
    valid = cls != none
    start = valid.copy()
    start[1:] &= cls[1:] != cls[:-1]
    start[:, 1:] &= cls[:, 1:] != cls[:, :-1]
    return int(np.count_nonzero(start))


class MemoryGuard:
    """After every window: the process's resident memory plus what the next window will take
    against the limit. Past it, the run stops with one line naming what grew (nothing is
    written: the layer is still in its private folder). Checked between windows, when a
    window's own memory has been handed back, so it is the next one that must still fit."""

    WHAT_GROWS = {
        "polygonize": "the regions still open across window borders",
        "sieve": "the sieve's table of the map's regions",
        "simplify": "the layer held whole for --simplify",
    }
    HINTS = {
        "smallest-first": " or use GDAL's sieve (--sieve gdal, ~24 bytes per region)",
        "simplify": " or leave out --simplify",
    }

    def __init__(self, plan: VectorizePlan, sieve: str | None, simplify: bool) -> None:
        self.limit = plan.limit
        self.ahead = dict(plan.parts)["one window"]
        self.hint = self.HINTS.get(sieve or "", "") or (self.HINTS["simplify"] if simplify
                                                         else "")
        self.simplify = simplify
        self.peak = 0

    def check(self, stage: str, done: int, total: int) -> None:
        rss = int(current_rss_mb() * 2**20)
        self.peak = max(self.peak, rss)
        if rss + self.ahead <= self.limit:
            return
        what = self.WHAT_GROWS.get(stage, "the run")
        if stage == "polygonize" and self.simplify:
            what = self.WHAT_GROWS["simplify"]
        raise GeodduError(
            f"--memory-limit {human_bytes(self.limit)}: this map needs more: "
            f"{human_bytes(rss)} held after {stage} {done}/{total} ({what}); nothing was "
            f"written; give a larger --memory-limit{self.hint}"
        )
