"""The plan of a segment job, on its own: no model, no files (like a dask graph: build it,
inspect it, then run it)."""

from __future__ import annotations

import numpy as np

from geoddu.engine.plan import grid_tiles, plan_segment, run_tiles
from geoddu.engine.steps import (
    CellPass,
    Communicate,
    DecodeRow,
    EncodeCell,
    ExchangeHalos,
    choose_schedule,
    device_work,
    encoder_runs,
    rank_work,
    strip_runs,
)
from geoddu.parallel.halo import owner_grid
from geoddu.partition import Partition

PART = Partition((32,) * 5, (32,) * 7)  # 35 subimages


def _plan(touched=None, communicates=True):
    return plan_segment(PART, stride=4, communicates=communicates, comm_halo=6, tile_cells=16,
                        touched=touched)


def test_whole_scene_plan():
    plan = _plan()
    assert plan.cell == 8 and len(plan.encode) == len(plan.decode) == 35
    assert plan.tiles == grid_tiles(5, 7, 2)
    covered = {(i, j) for r0, r1, c0, c1 in plan.tiles for i in range(r0, r1)
               for j in range(c0, c1)}
    assert covered == {c.index for c in PART.subimages()}


def test_an_area_adds_the_cells_within_the_networks_reach():
    plan = _plan(touched=[(2, 3)])
    assert [c.index for c in plan.decode] == [(2, 3)]
    # 6 bottleneck px of halo reach one 8 px cell into every neighbour.
    assert {c.index for c in plan.encode} == {(r, c) for r in (1, 2, 3) for c in (2, 3, 4)}
    assert plan.tiles == [(2, 3, 3, 4)]
    # Without communication the subimages are independent: nothing beyond the area.
    assert [c.index for c in _plan(touched=[(2, 3)], communicates=False).encode] == [(2, 3)]


def test_ranks_share_the_plan_without_overlap_or_gap():
    plan = _plan(touched=[(0, 0), (2, 3), (4, 6)])
    shares = [plan.for_rank(r, 3) for r in range(3)]
    decoded = [c.index for s in shares for c in s.decode]
    assert sorted(decoded) == sorted(c.index for c in plan.decode)
    encoded = [c.index for s in shares for c in s.encode]
    assert sorted(encoded) == sorted(c.index for c in plan.encode)
    owner = owner_grid(PART, 3)
    for s in shares:
        assert all(owner[c.index] == s.rank for c in (*s.encode, *s.decode))
        assert s.tiles == tuple(run_tiles(list(s.decode), 2))
        # What the rank exchanges with its neighbours: the 6 px halo reaches one cell, so it
        # receives exactly the other ranks' cells around its own (diagonals included).
        near = {(i + di, j + dj) for i, j in np.argwhere(owner == s.rank)
                for di in (-1, 0, 1) for dj in (-1, 0, 1)
                if 0 <= i + di < 5 and 0 <= j + dj < 7}
        received = {p for items in s.halo.recvs.values() for p, _ in items}
        assert received == {p for p in near if owner[p] != s.rank}
    # The assignment is Partition.assign's, contiguous row-major blocks.
    assert [len(b) for b in PART.assign(3)] == [12, 12, 11]


def test_one_pass_strips_and_their_cost():
    plan = _plan()
    assert plan.reach == 1
    # 7 columns in strips of 3 on one device: 3 + 3 + 1, each strip after the first takes its
    # left context from the one before, so only right context columns (3 and 6) run twice.
    (block,) = plan.strips(3)
    assert [s.cols for s in block] == [(0, 3), (3, 6), (6, 7)]
    assert [s.context for s in block] == [(0, 4), (2, 7), (5, 7)]
    assert [list(s.encoded_cols()) for s in block] == [[0, 1, 2, 3], [3, 4, 5, 6], [6]]
    assert encoder_runs(strip_runs(plan, 3)) == 35 + 2 * 5
    # On two devices the second device's first strip encodes its left context itself.
    blocks = plan.strips(3, devices=2)
    assert [[s.cols for s in b] for b in blocks] == [[(0, 3)], [(3, 6), (6, 7)]]
    assert not blocks[1][0].left_cached and list(blocks[1][0].encoded_cols()) == [2, 3, 4, 5, 6]


def test_the_schedule_follows_the_budget():
    plan = _plan()
    one = choose_schedule(plan, 1, cell_bytes=100, budget=10_000, strip_cells=8)
    assert (one.kind, one.width, one.encoder_runs, one.label) == ("one-pass", 7, 35, "one pass")
    # The budget holds two rows of two cells: strips of 2, cheaper than encoding twice.
    narrow = choose_schedule(plan, 1, cell_bytes=100, budget=400, strip_cells=8)
    assert (narrow.kind, narrow.width) == ("one-pass", 2)
    assert narrow.encoder_runs == 35 + 3 * 5
    # Not even one column fits: two passes, unless one pass is asked for.
    assert choose_schedule(plan, 1, cell_bytes=100, budget=100, strip_cells=8).kind == "two-pass"
    assert choose_schedule(plan, 1, 100, 100, 8, kind="one-pass").width == 1
    assert choose_schedule(plan, 1, 100, 10_000, 8, kind="two-pass").encoder_runs == 70
    # Many devices on a narrow grid: strips of one column would encode most cells three
    # times, so two passes are cheaper.
    assert choose_schedule(plan, 7, cell_bytes=100, budget=10_000, strip_cells=8).kind == "two-pass"
    # Without communication the subimages are independent: one pass, nothing twice.
    assert choose_schedule(_plan(communicates=False), 1, 0, 0, 8).encoder_runs == 35
    # Why, in figures: a cell's skips, the rows a strip keeps, the width, both costs.
    assert narrow.why == ("a strip keeps 2 rows of skips, 100 B a cell: strips of 2 columns "
                          "keep 400 B (budget 400 B, at most 8 columns); 50 encoder runs, two "
                          "passes would take 70")


def test_a_strips_steps_run_each_row_once_its_halo_is_encoded():
    """3 rows x 2 columns, reach 1, one strip: a row is decoded right after the row below it
    is encoded, the last row at the end; the maps of rows no halo reads any more go."""
    part = Partition((32,) * 3, (32,) * 2)
    plan = plan_segment(part, stride=4, communicates=True, comm_halo=6, tile_cells=16)
    ((run,),) = strip_runs(plan, 2)
    kinds = [(("E", s.cell.index) if isinstance(s, EncodeCell) else ("D", s.row, s.release))
             for s in run.steps]
    assert kinds == [("E", (0, 0)), ("E", (0, 1)), ("E", (1, 0)), ("E", (1, 1)), ("D", 0, -1),
                     ("E", (2, 0)), ("E", (2, 1)), ("D", 1, 0), ("D", 2, 1)]
    encodes = [s for s in run.steps if isinstance(s, EncodeCell)]
    assert all(s.keep_skips for s in encodes)  # every column is decoded by this strip
    assert [s.carry for s in encodes] == [False, True] * 3  # the last `reach` columns
    rows = [s for s in run.steps if isinstance(s, DecodeRow)]
    assert [[c.index for c in s.cells] for s in rows] == [[(r, 0), (r, 1)] for r in range(3)]


def test_every_device_has_its_steps():
    plan = _plan()
    one = choose_schedule(plan, 2, cell_bytes=100, budget=10_000, strip_cells=3)
    work = device_work(plan, one, ["cpu", "cuda:1"])
    # Strips of 3 on two devices: 3 columns, then 3 + 1; reads are the encode steps in order.
    assert [[r.strip.cols for r in w.strips] for w in work] == [[(0, 3)], [(3, 6), (6, 7)]]
    assert [len(w.reads) for w in work] == [5 * 4, 5 * 5 + 5 * 1]
    assert [w.totals() for w in work] == [
        {"encode": 20, "communicate": 5, "decode": 15},
        {"encode": 30, "communicate": 10, "decode": 20},
    ]
    two = choose_schedule(plan, 2, 100, 10_000, 3, kind="two-pass")
    work = device_work(plan, two, ["cpu", "cpu"])
    # Balanced contiguous blocks per pass; the tiles run once, on the first device.
    assert [[type(s) for s in w.steps] for w in work] == [
        [CellPass, Communicate, CellPass], [CellPass, CellPass]]
    assert [len(w.cells("encode")) for w in work] == [18, 17]
    assert work[0].cells("decode") == tuple(plan.decode[:18])
    assert work[0].tiles == tuple(plan.tiles) and work[1].tiles == ()
    assert work[1].reads == tuple(plan.encode[18:]) + tuple(plan.decode[18:])
    assert work[0].totals() == {"encode": 18, "communicate": len(plan.tiles), "decode": 18}
    # Without communication: one decode pass per device.
    alone = _plan(communicates=False)
    work = device_work(alone, choose_schedule(alone, 2, 0, 0, 8), ["cpu", "cpu"])
    assert [[(s.stage, len(s.cells)) for s in w.steps] for w in work] == [
        [("decode", 18)], [("decode", 17)]]


def test_a_ranks_steps():
    plan = _plan()
    for rank in range(3):
        work = rank_work(plan, rank, 3, "cpu")
        share = plan.for_rank(rank, 3)
        assert [type(s) for s in work.steps] == [CellPass, ExchangeHalos, Communicate, CellPass]
        assert work.cells("encode") == share.encode and work.cells("decode") == share.decode
        assert work.tiles == share.tiles and work.halo.recvs.keys() == share.halo.recvs.keys()
    alone = _plan(communicates=False)
    assert [type(s) for s in rank_work(alone, 0, 3, "cpu").steps] == [CellPass]
