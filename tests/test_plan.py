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
