"""The plan of a segment job, on its own: no model, no files (like a dask graph: build it,
inspect it, then run it)."""

from __future__ import annotations

from geoddu.engine.plan import grid_tiles, plan_segment, run_tiles
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
        assert s.halo is not None  # what the rank exchanges with its neighbours
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
    assert plan.one_pass_encoder_runs([block]) == 35 + 2 * 5
    # On two devices the second device's first strip encodes its left context itself.
    blocks = plan.strips(3, devices=2)
    assert [[s.cols for s in b] for b in blocks] == [[(0, 3)], [(3, 6), (6, 7)]]
    assert not blocks[1][0].left_cached and list(blocks[1][0].encoded_cols()) == [2, 3, 4, 5, 6]


def test_the_schedule_follows_the_budget():
    plan = _plan()
    one = plan.schedule(1, cell_bytes=100, budget=10_000, strip_cells=8)
    assert (one.kind, one.width, one.encoder_runs, one.label) == ("one-pass", 7, 35, "one pass")
    # The budget holds two rows of two cells: strips of 2, cheaper than encoding twice.
    narrow = plan.schedule(1, cell_bytes=100, budget=400, strip_cells=8)
    assert (narrow.kind, narrow.width) == ("one-pass", 2)
    assert narrow.encoder_runs == 35 + 3 * 5
    # Not even one column fits: two passes, unless one pass is asked for.
    assert plan.schedule(1, cell_bytes=100, budget=100, strip_cells=8).kind == "two-pass"
    assert plan.schedule(1, 100, 100, 8, kind="one-pass").width == 1
    assert plan.schedule(1, 100, 10_000, 8, kind="two-pass").encoder_runs == 70
    # Many devices on a narrow grid: strips of one column would encode most cells three
    # times, so two passes are cheaper.
    assert plan.schedule(7, cell_bytes=100, budget=10_000, strip_cells=8).kind == "two-pass"
    # Without communication the subimages are independent: one pass, nothing twice.
    assert _plan(communicates=False).schedule(1, 0, 0, 8).encoder_runs == 35
