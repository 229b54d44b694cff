"""The steps of a segment job, fixed before any of them runs: the schedule (one pass or two,
chosen from figures) and, for each device, what it reads and what it runs, in order.

Pure: a :class:`~geoddu.engine.plan.SegmentPlan` and a few numbers in, steps out; no torch, no
files. The executors walk these steps and decide nothing themselves, so what
`geoddu segment --plan` prints is what a run does.

* one pass (`StripRun`): a device takes its strips left to right; in each, row by row, it
  encodes the cells (`EncodeCell`) and, as soon as the halo below a row is encoded,
  communicates and decodes that row (`DecodeRow`);
* two passes (`CellPass`, `Communicate`): every device encodes its block of cells, the first
  device runs the communication network over the tiles, every device decodes its block;
* torchrun ranks: the same, with `ExchangeHalos` between the encode pass and the tiles.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from ..parallel.halo import HaloPlan
from ..partition import Subimage, balanced_blocks
from ..sizes import human_bytes
from .plan import SegmentPlan, Strip, Tile

__all__ = [
    "CellPass",
    "Communicate",
    "DecodeRow",
    "DeviceWork",
    "EncodeCell",
    "ExchangeHalos",
    "Schedule",
    "StripRun",
    "choose_schedule",
    "device_work",
    "encoder_runs",
    "rank_work",
    "resumed_work",
    "strip_runs",
]


@dataclass(frozen=True)
class EncodeCell:
    """One pass: read and encode `cell`. `keep_skips`: the strip decodes it, so its skips wait
    for its row (else only its bottleneck maps are kept, as halo for its neighbours). `carry`:
    its maps are also handed to the device's next strip, as that strip's left context."""

    cell: Subimage
    keep_skips: bool
    carry: bool


@dataclass(frozen=True)
class DecodeRow:
    """One pass: the halo below row `row` is encoded. Communicate the row's tile, decode its
    `cells` (those the strip decodes in that row; may be none), then drop the bottleneck maps
    of rows up to `release`, which no later halo reads."""

    row: int
    cells: tuple[Subimage, ...]
    release: int


@dataclass(frozen=True)
class StripRun:
    """One strip, top to bottom: its encode and decode steps in the order they run."""

    strip: Strip
    steps: tuple[EncodeCell | DecodeRow, ...]


@dataclass(frozen=True)
class CellPass:
    """Two passes: every cell of `cells` is read and encoded. `stage` "encode": its last F
    bottleneck maps go to a store. "decode": encoded again for the skips, decoded with the
    communicated maps (or its own, without communication) and written."""

    stage: str
    cells: tuple[Subimage, ...]


@dataclass(frozen=True)
class Communicate:
    """Two passes, once every device has encoded: the communication network over `tiles`."""

    tiles: tuple[Tile, ...]


@dataclass(frozen=True)
class ExchangeHalos:
    """torchrun ranks, after the encode pass: the bottleneck halos this rank's tiles read from
    its neighbours, and those they read from it (point to point)."""

    halo: HaloPlan


Step = StripRun | CellPass | Communicate | ExchangeHalos
Cell = tuple[int, int]


@dataclass(frozen=True)
class DeviceWork:
    """What one device (a thread of this process, or a torchrun rank) runs, in order."""

    device: str
    steps: tuple[Step, ...]

    @property
    def strips(self) -> tuple[StripRun, ...]:
        return tuple(s for s in self.steps if isinstance(s, StripRun))

    def cells(self, stage: str) -> tuple[Subimage, ...]:
        """The cells of this device's `stage` pass ("encode", "decode"); none if it has none."""
        return next((s.cells for s in self.steps if isinstance(s, CellPass) and s.stage == stage),
                    ())

    @property
    def tiles(self) -> tuple[Tile, ...]:
        """The communication tiles this device runs."""
        return tuple(t for s in self.steps if isinstance(s, Communicate) for t in s.tiles)

    @property
    def halo(self) -> HaloPlan | None:
        """What this rank exchanges with its neighbours (None: no exchange)."""
        return next((s.halo for s in self.steps if isinstance(s, ExchangeHalos)), None)

    @property
    def reads(self) -> tuple[Subimage, ...]:
        """The windows this device reads, in order: its prefetcher's list (two passes read
        their cells once per pass)."""
        out: list[Subimage] = []
        for s in self.steps:
            if isinstance(s, StripRun):
                out += [e.cell for e in s.steps if isinstance(e, EncodeCell)]
            elif isinstance(s, CellPass):
                out += s.cells
        return tuple(out)

    def totals(self) -> dict[str, int]:
        """Progress items per stage: encoded cells, communicated tiles (a row of a strip is
        one), decoded cells."""
        n = {"encode": 0, "communicate": 0, "decode": 0}
        for s in self.steps:
            if isinstance(s, StripRun):
                n["encode"] += sum(isinstance(e, EncodeCell) for e in s.steps)
                rows = [e for e in s.steps if isinstance(e, DecodeRow) and e.cells]
                n["communicate"] += len(rows)
                n["decode"] += sum(len(e.cells) for e in rows)
            elif isinstance(s, CellPass):
                n[s.stage] += len(s.cells)
            elif isinstance(s, Communicate):
                n["communicate"] += len(s.tiles)
        return n


def _strip_run(
    plan: SegmentPlan, strip: Strip, encode: Mapping[Cell, Subimage],
    decode: Mapping[Cell, Subimage],
) -> StripRun:
    """The steps of one strip: row by row, its encoded columns, then every row whose halo
    below is now encoded (`reach` rows behind); the last rows once the grid ends."""
    rows = plan.partition.grid[0]
    (c0, c1), reach = strip.cols, plan.reach
    steps: list[EncodeCell | DecodeRow] = []

    def decode_row(d: int) -> DecodeRow:
        cells = tuple(decode[(d, j)] for j in range(c0, c1) if (d, j) in decode)
        return DecodeRow(d, cells, d - reach)

    done = 0  # rows decoded so far
    for i in range(rows):
        for j in strip.encoded_cols():
            if (i, j) in encode:
                keep = (i, j) in decode and c0 <= j < c1
                steps.append(EncodeCell(encode[(i, j)], keep, c1 - reach <= j < c1))
        while done <= i - reach:
            steps.append(decode_row(done))
            done += 1
    steps += [decode_row(d) for d in range(done, rows)]
    return StripRun(strip, tuple(steps))


def strip_runs(plan: SegmentPlan, width: int, devices: int = 1) -> list[tuple[StripRun, ...]]:
    """Every device's strips of `width` columns (:meth:`SegmentPlan.strips`), with their steps:
    the only walk over the strip grid."""
    encode = {c.index: c for c in plan.encode}
    decode = {c.index: c for c in plan.decode}
    return [tuple(_strip_run(plan, s, encode, decode) for s in block)
            for block in plan.strips(width, devices)]


def resumed_work(
    plan: SegmentPlan, work: Sequence[DeviceWork], done: Collection[tuple[int, int]]
) -> tuple[DeviceWork, ...]:
    """`work` (one pass) less the strips whose columns are `done` (a killed --resume run's).
    A strip whose left neighbour does not run here encodes its left context again, as a
    device's first strip does: the same cells from the same pixels, so the same maps."""
    encode = {c.index: c for c in plan.encode}
    decode = {c.index: c for c in plan.decode}
    out = []
    for w in work:
        runs: list[StripRun] = []
        left_runs = False
        for r in w.strips:
            if r.strip.cols in done:
                left_runs = False
                continue
            if r.strip.left_cached and not left_runs:
                r = _strip_run(plan, replace(r.strip, left_cached=False), encode, decode)
            runs.append(r)
            left_runs = True
        out.append(DeviceWork(w.device, tuple(runs)))
    return tuple(out)


def encoder_runs(runs: Sequence[Sequence[StripRun]]) -> int:
    """Encoder passes the strips cost: every planned cell once, the re-encoded right context
    columns twice."""
    return sum(isinstance(e, EncodeCell) for block in runs for r in block for e in r.steps)


@dataclass(frozen=True)
class Schedule:
    """How a one-process job runs: "one-pass" (strips, every skip kept until its row is
    decoded; `runs`, per device, are the strips' steps) or "two-pass" (encode everything,
    communicate, encode again and decode). `encoder_runs` is what it costs in encoder passes;
    `why` says which figures chose it."""

    kind: str
    encoder_runs: int
    runs: tuple[tuple[StripRun, ...], ...] = ()
    width: int = 0
    why: str = ""

    @property
    def label(self) -> str:
        return "one pass" if self.kind == "one-pass" else "two passes"

    @property
    def strips(self) -> tuple[tuple[Strip, ...], ...]:
        return tuple(tuple(r.strip for r in block) for block in self.runs)


def choose_schedule(
    plan: SegmentPlan,
    devices: int,
    cell_bytes: int,
    budget: int,
    strip_cells: int,
    kind: str = "auto",
    resumable: bool = False,
) -> Schedule:
    """One pass where its skips fit `budget` (each cell's skips are `cell_bytes`; a strip
    keeps `reach + 1` rows of them) and it runs the encoder fewer times than two passes
    would; else two passes. `kind` forces one ("one-pass", "two-pass"). `resumable`
    (--resume, which continues strips): one pass wherever it fits, whatever it costs."""
    two = len(plan.encode) + len(plan.decode)
    if not plan.communicates:  # independent subimages: the decode pass is the only one
        return Schedule("one-pass", len(plan.decode),
                        why="no communication: the subimages are independent, one pass")
    used = {c.col for c in plan.decode}
    span = max(used) - min(used) + 1
    rows = plan.reach + 1
    fits = budget // max(1, rows * cell_bytes)
    width = min(strip_cells, span, fits)
    if devices > 1:  # every device gets a strip
        width = min(width, -(-span // devices))
    keeps = f"a strip keeps {rows} rows of skips, {human_bytes(cell_bytes)} a cell"
    if kind == "two-pass":
        return Schedule("two-pass", two, why="two passes asked for (--schedule two-pass)")
    if width < 1 and kind != "one-pass":
        return Schedule("two-pass", two, why=f"{keeps}: not even one column fits the "
                        f"{human_bytes(budget)} skip budget")
    width = max(1, width)
    runs = tuple(strip_runs(plan, width, devices))
    one = encoder_runs(runs)
    if kind == "auto" and one >= two and not resumable:
        return Schedule("two-pass", two, why=f"strips of {_columns(width)} would run the "
                        f"encoder {one} times, two passes {two}")
    why = (f"{keeps}: strips of {_columns(width)} keep {human_bytes(rows * width * cell_bytes)} "
           f"(budget {human_bytes(budget)}, at most {strip_cells} columns); {one} encoder runs, "
           f"two passes would take {two}")
    if kind == "one-pass":
        why = "one pass asked for (--schedule one-pass); " + why
    elif one >= two:
        why += "; one pass for --resume, which continues strips"
    return Schedule("one-pass", one, runs, width, why)


def device_work(
    plan: SegmentPlan, schedule: Schedule, devices: Sequence[str]
) -> tuple[DeviceWork, ...]:
    """What each device of this process runs: its strips (one pass; a device without a strip
    gets none), or its contiguous, balanced blocks of cells per pass (two passes, and
    subimages without communication); the first device runs the communication tiles."""
    if plan.communicates and schedule.kind == "one-pass":
        return tuple(DeviceWork(d, runs) for d, runs in zip(devices, schedule.runs, strict=False))
    decode = balanced_blocks(plan.decode, len(devices))
    if not plan.communicates:
        return tuple(DeviceWork(d, (CellPass("decode", tuple(b)),))
                     for d, b in zip(devices, decode, strict=True))
    encode = balanced_blocks(plan.encode, len(devices))
    return tuple(
        DeviceWork(d, (
            CellPass("encode", tuple(encode[k])),
            *([Communicate(tuple(plan.tiles))] if k == 0 else []),
            CellPass("decode", tuple(decode[k])),
        ))
        for k, d in enumerate(devices)
    )


def rank_work(plan: SegmentPlan, rank: int, world: int, device: str) -> DeviceWork:
    """What rank `rank` of `world` runs: its share of the cells (:meth:`SegmentPlan.for_rank`),
    in two passes, with the halo exchange between them."""
    mine = plan.for_rank(rank, world)
    if mine.halo is None:
        return DeviceWork(device, (CellPass("decode", mine.decode),))
    return DeviceWork(device, (
        CellPass("encode", mine.encode),
        ExchangeHalos(mine.halo),
        Communicate(mine.tiles),
        CellPass("decode", mine.decode),
    ))


def _columns(n: int) -> str:
    return f"{n} column" + ("s" if n != 1 else "")
