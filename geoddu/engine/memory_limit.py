"""`--memory-limit`: a plan whose expected peak fits a hard limit, or a refusal before any work.

The plan's estimate (geoddu.engine.memory, within about 10% of the measured peak RSS,
`benchmarks/plan_memory.py`) is compared with the limit. When it does not fit, the knobs that
change memory and never the result are turned, from the cheapest to the slowest: narrower
one-pass strips (fewer live skips, more right context encoded twice), then two passes with the
bottleneck maps on the scratch disk and smaller communication tiles. The first plan that fits
runs; if none does, the error names the smallest limit that would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import GeodduError
from ..sizes import MEMORY_MARGIN as MARGIN
from ..sizes import human_bytes

__all__ = ["fit_memory_limit"]


def _cheaper(request: Any) -> Iterator[Any]:
    """The request with its memory knobs turned, one step at a time (each never changes the
    classes)."""
    width = request.strip_cells
    while width > 1:
        width //= 2
        yield request.replace(strip_cells=width)
    for tile in (request.comm_tile_cells, 64, 16):
        yield request.replace(schedule="two-pass", store_max_ram_bytes=0, comm_tile_cells=tile)


def fit_memory_limit(plan: Any, replan: Callable[[Any], Any]) -> Any:
    """`plan`, or the first of its cheaper variants (`replan(request)`) whose host peak times
    MARGIN fits `plan.request.memory_limit`."""
    limit = plan.request.memory_limit
    if limit is None:
        return plan
    best = plan
    for candidate in (plan, *(replan(r) for r in _cheaper(plan.request))):
        if candidate.memory.peak("host") * MARGIN <= limit:
            return candidate
        if candidate.memory.peak("host") < best.memory.peak("host"):
            best = candidate
    need = best.memory.peak("host") * MARGIN
    biggest = max((p for p in best.memory.parts if p.where == "host"), key=lambda p: p.bytes)
    raise GeodduError(
        f"--memory-limit {human_bytes(limit)}: this run needs at least {human_bytes(need)} "
        f"(the smallest plan, {best.schedule.kind}, expects {human_bytes(best.memory.peak())}; "
        f"its largest part: {biggest.name}, {human_bytes(biggest.bytes)}); give "
        f"--memory-limit {-(-int(need) // 2**20)}M or more"
    )
