"""rich progress bars fed by the engine's progress(stage, done, total) callback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from geoddu.events import STAGE_LABELS


def progress_bars(field: str, transient: bool) -> Progress:
    """The bars every command draws on stderr: label, bar, n/N, `task.fields[field]`, times."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[{field}]}}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True), transient=transient)


@contextlib.contextmanager
def progress_reporter(quiet: bool = False) -> Iterator[Callable[[str, int, int], None]]:
    """A callback drawing one bar per stage on stderr; a no-op when quiet."""
    if quiet:
        yield lambda stage, done, total: None
        return
    tasks: dict[str, int] = {}
    # Started by the first update: a run that fails before any work (a bad checkpoint, say)
    # prints its one error line and nothing else, not an empty progress display.
    bar = progress_bars("rate", transient=False)

    def update(stage: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if stage not in tasks:
            tasks[stage] = bar.add_task(STAGE_LABELS.get(stage, stage), total=total, rate="")
        task = tasks[stage]
        elapsed = bar.tasks[task].elapsed or 0.0
        rate = f"{done / elapsed:.1f} /s" if elapsed > 0 else ""
        bar.update(task, completed=done, total=total, rate=rate)

    try:
        yield update
    finally:
        if tasks:
            bar.stop()
