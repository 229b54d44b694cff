"""The cells of one segment job, described before any of it runs: no torch, no open files.

A :class:`SegmentPlan` says which subimages are encoded and decoded (an area of interest adds
the cells within the communication network's reach), how the bottleneck mosaic is cut into
communication tiles (each with a halo as wide as the network's receptive field, so tiling
changes nothing), how the grid is cut into one-pass strips, and which rank owns which
subimages. :meth:`SegmentPlan.for_rank` adds what one torchrun rank exchanges with its
neighbours (the halo plan). The steps each device runs are built from it
(`geoddu/engine/steps.py`), and the whole job's plan from those (`geoddu/engine/planner.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from ..parallel.halo import HaloPlan, halo_plan, owner_grid
from ..partition import Partition, Subimage

__all__ = [
    "RankPlan",
    "SegmentPlan",
    "Strip",
    "grid_tiles",
    "plan_segment",
    "run_tiles",
]

Tile = tuple[int, int, int, int]  # cell rows r0:r1, cell columns c0:c1


def grid_tiles(rows: int, cols: int, step: int) -> list[Tile]:
    """Square tiles of step x step cells covering the whole grid: (r0, r1, c0, c1)."""
    return [
        (r, min(rows, r + step), c, min(cols, c + step))
        for r in range(0, rows, step)
        for c in range(0, cols, step)
    ]


def run_tiles(cells: Sequence[Subimage], step: int) -> list[Tile]:
    """Tiles covering exactly `cells`: runs of consecutive cells within a grid row, cut at
    `step` cells (a rank's contiguous block need not be a rectangle)."""
    tiles: list[Tile] = []
    for c in sorted(cells, key=lambda c: (c.row, c.col)):
        last = tiles[-1] if tiles else None
        if last and last[0] == c.row and last[3] == c.col and last[3] - last[2] < step:
            tiles[-1] = (last[0], last[1], last[2], c.col + 1)
        else:
            tiles.append((c.row, c.row + 1, c.col, c.col + 1))
    return tiles


@dataclass(frozen=True)
class Strip:
    """A band of cell columns that one device takes from top to bottom in one pass.

    `cols` (c0, c1) are decoded; `context` (e0, e1) are encoded, the strip widened by the
    communication network's reach so that every decoded row sees its whole halo. When the
    same device ran the strip to the left, `left_cached`: that strip kept the maps of its last
    `reach` columns, so only the right context is encoded twice.
    """

    cols: tuple[int, int]
    context: tuple[int, int]
    left_cached: bool

    def encoded_cols(self) -> range:
        """The columns this strip runs the encoder on."""
        start = self.cols[0] if self.left_cached else self.context[0]
        return range(start, self.context[1])


@dataclass(frozen=True)
class RankPlan:
    """One rank's share: the cells it encodes and decodes, its tiles, its halo traffic."""

    rank: int
    encode: tuple[Subimage, ...]
    decode: tuple[Subimage, ...]
    tiles: tuple[Tile, ...]
    halo: HaloPlan | None


@dataclass(frozen=True)
class SegmentPlan:
    """The whole job. `cell` is a subimage's side in bottleneck pixels."""

    partition: Partition
    communicates: bool
    cell: int
    comm_halo: int
    tile_cells: int
    encode: tuple[Subimage, ...]
    decode: tuple[Subimage, ...]
    area: bool  # an area of interest limits the job

    @property
    def tiles(self) -> list[Tile]:
        """Communication tiles of a one-process run."""
        step = max(1, self.tile_cells // self.cell)
        if self.area:
            return run_tiles(self.decode, step)
        return grid_tiles(*self.partition.grid, step)

    @property
    def reach(self) -> int:
        """Neighbouring cells the communication network's halo reaches into."""
        return -(-self.comm_halo // self.cell) if self.communicates else 0

    def strips(self, width: int, devices: int = 1) -> list[list[Strip]]:
        """Strips of `width` decoded columns over the decoded cells, in contiguous, balanced
        blocks per device (a device takes its strips left to right)."""
        rows, cols = self.partition.grid
        used = sorted({c.col for c in self.decode})
        lo, hi = used[0], used[-1] + 1
        bounds = [(c, min(hi, c + width)) for c in range(lo, hi, width)]
        blocks: list[list[Strip]] = []
        n = len(bounds)
        for k in range(min(devices, n)):
            mine = bounds[k * n // min(devices, n) : (k + 1) * n // min(devices, n)]
            blocks.append([
                Strip((c0, c1), (max(0, c0 - self.reach), min(cols, c1 + self.reach)), i > 0)
                for i, (c0, c1) in enumerate(mine)
            ])
        return blocks

    def owners(self, world: int) -> np.ndarray:
        """The rank that owns each cell of the grid (contiguous row-major blocks)."""
        return owner_grid(self.partition, world)

    def for_rank(self, rank: int, world: int) -> RankPlan:
        """What rank `rank` of `world` encodes, communicates, decodes and exchanges."""
        owner = self.owners(world)
        mine = {c.index for c in self.partition.assign(world)[rank]}
        decode = tuple(c for c in self.decode if c.index in mine)
        encode = tuple(c for c in self.encode if c.index in mine)
        step = max(1, self.tile_cells // self.cell)
        tiles = tuple(run_tiles(decode, step)) if self.communicates else ()
        halo = (
            halo_plan(owner, rank, self.cell, self.comm_halo) if self.communicates else None
        )
        return RankPlan(rank, encode, decode, tiles, halo)


def aoi_reach(
    partition: Partition, touched: Collection[tuple[int, int]], cell: int, comm_halo: int
) -> set[tuple[int, int]]:
    """The cells whose encodings reach the `touched` cells through the communication network."""
    reach = -(-comm_halo // cell)  # neighbouring cells the halo reaches into
    return {
        (r + dr, c + dc)
        for r, c in touched
        for dr in range(-reach, reach + 1)
        for dc in range(-reach, reach + 1)
    }


def plan_segment(
    partition: Partition,
    *,
    stride: int,
    communicates: bool,
    comm_halo: int,
    tile_cells: int,
    touched: Collection[tuple[int, int]] | None = None,
) -> SegmentPlan:
    """Plan a job over `partition`. `touched`: the cells an area of interest touches (None:
    the whole scene)."""
    cells = partition.subimages()
    cell = partition.row_sizes[0] // stride
    if touched is None:
        decode = encode = tuple(cells)
    else:
        decode = tuple(c for c in cells if c.index in set(touched))
        near = aoi_reach(partition, touched, cell, comm_halo) if communicates else set(touched)
        encode = tuple(c for c in cells if c.index in near)
    return SegmentPlan(
        partition=partition,
        communicates=communicates,
        cell=cell,
        comm_halo=comm_halo,
        tile_cells=tile_cells,
        encode=encode,
        decode=decode,
        area=touched is not None,
    )
