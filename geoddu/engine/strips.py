"""The one-pass schedule: every subimage is encoded once, and decoded while its skip
connections are still in memory.

The communication network reaches `reach` cells (its halo, 6 bottleneck pixels for 3 layers of
5x5, is less than one cell), so row r of the grid can be communicated and decoded as soon as
row r + reach is encoded. A device takes a strip of columns from top to bottom: it encodes
row by row (the strip plus `reach` context columns on each side, whose bottleneck maps only
are kept), and decodes each row as soon as its halo is complete. At most `reach + 1` rows of a
strip's skips are alive, so memory is set by the strip's width, not by the scene. The strip to
the left hands over the maps of its last columns; only the right context is encoded twice.
The result equals the two-pass schedule's (and the whole-scene forward): the same cells are
encoded from the same pixels and communicated over the same halos.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from ..partition import Subimage
from ..resources import release_free_memory
from .plan import SegmentPlan
from .stages import Worker, communicate_tile, decode_window, put_nodata
from .steps import DecodeRow, EncodeCell, StripRun

__all__ = ["run_strips"]

Cell = tuple[int, int]


def run_strips(
    ctx: Worker,
    runs: Sequence[StripRun],
    plan: SegmentPlan,
    feed: Iterator[tuple[Subimage, np.ndarray, np.ndarray]],
    sink: Any,
    area: Any,
    tick: Callable[[str], None],
    stop: threading.Event,
    strip_done: Callable[[StripRun], None] | None = None,
    trim_each_row: bool = False,
) -> tuple[int, int]:
    """Run the planned steps of `runs` (one device's strips) on `ctx`'s device; `feed` yields
    the windows of their encode steps, in order (the device's planned reads). `strip_done`
    is called after each strip, once every window of it is in `sink` (--resume records it).
    `trim_each_row`: give the freed heap back after every decoded row, not once per strip
    (what --memory-limit needs: see `_StripRun.decode_row`).
    Returns (encoder runs, all-nodata subimages)."""
    n_runs = skipped = 0
    carried: dict[Cell, np.ndarray] = {}
    for strip in runs:
        left = carried if strip.strip.left_cached else {}
        one = _StripRun(ctx, strip, plan, sink, area, tick, left, trim_each_row)
        if not one.run(feed, stop):
            break
        if strip_done is not None:
            strip_done(strip)
        carried = one.carried
        n_runs += one.runs
        skipped += one.skipped
    return n_runs, skipped


class _StripRun:
    """One strip, top to bottom: what is alive while it runs."""

    def __init__(
        self,
        ctx: Worker,
        strip: StripRun,
        plan: SegmentPlan,
        sink: Any,
        area: Any,
        tick: Callable[[str], None],
        left: dict[Cell, np.ndarray],
        trim_each_row: bool = False,
    ) -> None:
        self.ctx, self.plan, self.sink, self.area, self.tick = ctx, plan, sink, area, tick
        self.trim_each_row = trim_each_row
        self.zeros = np.zeros((ctx.net.comm_features, plan.cell, plan.cell), np.float32)
        self.maps: dict[Cell, np.ndarray] = dict(left)  # bottleneck maps of live rows
        # The maps of the last `reach` columns, handed to the next strip as its left context:
        # the planned `carry` cells, and left context that reaches past a narrow strip.
        self.steps = strip.steps
        c1 = strip.strip.cols[1]
        self.carried = {k: v for k, v in left.items() if k[1] >= c1 - plan.reach}
        self.live: dict[Cell, tuple[list[torch.Tensor], torch.Tensor, np.ndarray]] = {}
        self.blank: set[Cell] = set()  # decoded cells without a valid pixel
        self.runs = self.skipped = 0

    def run(self, feed: Iterator[tuple[Subimage, np.ndarray, np.ndarray]],
            stop: threading.Event) -> bool:
        """False if stopped."""
        for step in self.steps:  # the prefetcher reads the encode steps' cells in this order
            if stop.is_set():
                return False
            if isinstance(step, EncodeCell):
                _, raw, valid = next(feed)
                self.tick("encode")
                self.encode_cell(step, raw, valid)
            else:
                self.decode_row(step)
        # Once per strip, not per row: the next row's skips reuse the freed row's heap
        # without page faults (trimming each row cost 8-9% of a run, for 6-16% less RSS).
        release_free_memory()
        return True

    def encode_cell(self, step: EncodeCell, raw: np.ndarray, valid: np.ndarray) -> None:
        index = step.cell.index
        if not valid.any():  # contributes zeros to the mosaic
            if step.keep_skips:
                self.blank.add(index)
            return
        ctx = self.ctx
        x = ctx.model.prepare(raw, valid)
        with ctx.model.computing():
            skips, bottleneck = ctx.net.encode(x)
            maps = ctx.net.comm_input(bottleneck)[0].float().cpu().numpy()
        self.runs += 1
        self.maps[index] = maps
        if step.carry:
            self.carried[index] = maps
        if step.keep_skips:
            self.live[index] = (skips, bottleneck, valid)

    def decode_row(self, step: DecodeRow) -> None:
        ctx = self.ctx
        if step.cells:
            self.tick("communicate")
        todo = []
        for cell in step.cells:
            if cell.index in self.blank:
                put_nodata(ctx, cell, self.sink)
                self.skipped += 1
                self.tick("decode")
            elif cell.index in self.live:
                todo.append(cell)
        if todo:
            d = step.row
            out = communicate_tile(
                ctx.model, (d, d + 1, todo[0].col, todo[-1].col + 1),
                self.plan.partition.grid, self.plan.cell,
                lambda k: self.maps.get(k, self.zeros),
            )
            for cell in todo:
                skips, bottleneck, valid = self.live.pop(cell.index)
                maps = torch.from_numpy(out[cell.index]).unsqueeze(0).to(ctx.device)
                decode_window(ctx, cell, skips, bottleneck, maps, valid, self.sink, self.area)
                self.tick("decode")
        for k in [k for k in self.maps if k[0] <= step.release]:  # no later halo needs them
            del self.maps[k]
        if self.trim_each_row:
            # glibc serves each row's skips from holes the freed rows left, and the holes it
            # cannot reuse stay resident: trimmed once per strip, the peak crept up as the run
            # went on (DDU-Net(4,64,Y) base 16, 512 px, --memory-limit 1G: 873 MiB on 8192^2,
            # 958 on 16384^2, 1075 on 32768^2, against 880 MB planned). Trimmed each row it
            # stayed at 798 and 842 MiB, for 7.7% more time (docs/reliability.md).
            release_free_memory()
