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

from ..parallel.devices import autocast
from ..partition import Subimage
from ..resources import release_free_memory
from .plan import SegmentPlan, Strip
from .stages import Worker, communicate_tile, decode_window, put_nodata

__all__ = ["run_strips", "strip_order", "strip_rows"]

Cell = tuple[int, int]


def strip_order(plan: SegmentPlan, strips: Sequence[Strip]) -> list[Subimage]:
    """The windows `run_strips` encodes, in the order it reads them (the prefetcher's list)."""
    encode = {c.index: c for c in plan.encode}
    return [
        encode[(i, j)]
        for strip in strips
        for i in range(plan.partition.grid[0])
        for j in strip.encoded_cols()
        if (i, j) in encode
    ]


def strip_rows(plan: SegmentPlan, strips: Sequence[Strip]) -> int:
    """The rows `run_strips` communicates (one tile each): those with a cell to decode."""
    decode = {c.index for c in plan.decode}
    return sum(
        any((i, j) in decode for j in range(*strip.cols))
        for strip in strips
        for i in range(plan.partition.grid[0])
    )


def run_strips(
    ctx: Worker,
    strips: Sequence[Strip],
    plan: SegmentPlan,
    feed: Iterator[tuple[Subimage, np.ndarray, np.ndarray]],
    sink: Any,
    area: Any,
    tick: Callable[[str], None],
    stop: threading.Event,
) -> tuple[int, int]:
    """Encode, communicate and decode `strips` in one pass on `ctx`'s device; `feed` yields
    the windows of :func:`strip_order`. Returns (encoder runs, all-nodata subimages)."""
    runs = skipped = 0
    carried: dict[Cell, np.ndarray] = {}
    for strip in strips:
        one = _StripRun(ctx, strip, plan, sink, area, tick, carried if strip.left_cached else {})
        if not one.run(feed, stop):
            break
        carried = one.carried
        runs += one.runs
        skipped += one.skipped
    return runs, skipped


class _StripRun:
    """One strip, top to bottom: what is alive while it runs."""

    def __init__(
        self,
        ctx: Worker,
        strip: Strip,
        plan: SegmentPlan,
        sink: Any,
        area: Any,
        tick: Callable[[str], None],
        left: dict[Cell, np.ndarray],
    ) -> None:
        self.ctx, self.strip, self.plan, self.sink, self.area, self.tick = (
            ctx, strip, plan, sink, area, tick
        )
        self.reach = plan.reach
        self.encode = {c.index for c in plan.encode}
        self.decode = {c.index: c for c in plan.decode}
        self.zeros = np.zeros((ctx.net.comm_features, plan.cell, plan.cell), np.float32)
        c1 = strip.cols[1]
        self.maps: dict[Cell, np.ndarray] = dict(left)  # bottleneck maps of live rows
        # The last `reach` columns' maps, handed to the next strip as its left context.
        self.carried = {k: v for k, v in left.items() if k[1] >= c1 - self.reach}
        self.live: dict[Cell, tuple[list[torch.Tensor], torch.Tensor, np.ndarray]] = {}
        self.blank: set[Cell] = set()  # decoded cells without a valid pixel
        self.runs = self.skipped = 0

    def run(self, feed: Iterator[tuple[Subimage, np.ndarray, np.ndarray]],
            stop: threading.Event) -> bool:
        """False if stopped."""
        rows = self.plan.partition.grid[0]
        c0, c1 = self.strip.cols
        done = 0  # rows decoded so far
        for i in range(rows):
            for j in self.strip.encoded_cols():
                if (i, j) not in self.encode:
                    continue
                if stop.is_set():
                    return False
                cell, raw, valid = next(feed)
                assert cell.index == (i, j), "the prefetcher's order is strip_order's"
                self.tick("encode")
                self.encode_cell(cell, raw, valid, kept=(i, j) in self.decode and c0 <= j < c1)
            while done <= i - self.reach:  # row `done`'s halo is complete
                self.decode_row(done)
                done += 1
        while done < rows:
            if stop.is_set():
                return False
            self.decode_row(done)
            done += 1
        return True

    def encode_cell(self, cell: Subimage, raw: np.ndarray, valid: np.ndarray, kept: bool) -> None:
        if not valid.any():  # contributes zeros to the mosaic
            if kept:
                self.blank.add(cell.index)
            return
        ctx = self.ctx
        x = ctx.model.prepare(raw, valid)
        with autocast(ctx.device, ctx.precision):
            skips, bottleneck = ctx.net.encode(x)
            maps = ctx.net.comm_input(bottleneck)[0].float().cpu().numpy()
        self.runs += 1
        self.maps[cell.index] = maps
        if self.strip.cols[1] - self.reach <= cell.col < self.strip.cols[1]:
            self.carried[cell.index] = maps
        if kept:
            self.live[cell.index] = (skips, bottleneck, valid)

    def decode_row(self, d: int) -> None:
        ctx = self.ctx
        mine = [(d, j) for j in range(*self.strip.cols) if (d, j) in self.decode]
        if mine:
            self.tick("communicate")
        for index in sorted(self.blank.intersection(mine)):
            put_nodata(ctx, self.decode[index], self.sink)
            self.skipped += 1
            self.tick("decode")
        todo = [k for k in mine if k in self.live]
        if todo:
            out = communicate_tile(
                ctx.model, ctx.precision, (d, d + 1, todo[0][1], todo[-1][1] + 1),
                self.plan.partition.grid, self.plan.cell,
                lambda k: self.maps.get(k, self.zeros),
            )
            for index in todo:
                skips, bottleneck, valid = self.live.pop(index)
                maps = torch.from_numpy(out[index]).unsqueeze(0).to(ctx.device)
                decode_window(
                    ctx, self.decode[index], skips, bottleneck, maps, valid, self.sink, self.area
                )
                self.tick("decode")
        for k in [k for k in self.maps if k[0] <= d - self.reach]:  # no later halo needs them
            del self.maps[k]
        if todo:
            release_free_memory()
