"""Progress on stderr fed by the engine's progress(stage, done, total) callback.

On a terminal: a transient status line while a run sets up (importing torch, loading the model,
opening the scene take seconds before the first subimage), then one rich bar per stage with its
unit, rate, elapsed and remaining time. Anywhere else (a file, a pipe, a CI log) a redrawn bar
would be noise or nothing at all until the end, so each stage is written as plain lines: when
it starts, at most every LINE_PERIOD_S seconds while it runs, and when it ends. Nothing is
written before the first report: a run that fails while setting up prints its one error line
and nothing else (the status line on a terminal is erased).

rich is imported only when a display is made: `geoddu --help` stays fast.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import click

from geoddu.events import STAGE_LABELS

# What a stage counts (the engines report one step per subimage, tile, window or scene);
# stages reported as 0/1 then 1/1 (simplify, write) have no unit and show no count.
STAGE_UNITS = {
    "encode": "subimages",
    "decode": "subimages",
    "communicate": "tiles",
    "sieve": "windows",
    "polygonize": "windows",
    "count": "windows",
    "pick": "windows",
    "scenes": "scenes",
}
# A plain-line report at most this often per stage (plus its start and end): a log of a
# one-hour run stays a few hundred lines.
LINE_PERIOD_S = 10.0


def progress_bars(field: str, transient: bool) -> Any:
    """Bars on stderr (train's epochs and batches): label, bar, n/N, `task.fields[field]`,
    elapsed and remaining time."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(f"{{task.fields[{field}]}}"),
        TextColumn("elapsed"),
        TimeElapsedColumn(),
        TextColumn("remaining"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, console=Console(stderr=True), transient=transient)


def _clock(seconds: float) -> str:
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _counted(unit: str | None, done: int, total: int, elapsed: float) -> str:
    """What a stage has done: '12/40 subimages, 3.1 subimages/s, 0:00:04 elapsed, 0:00:09
    remaining'; '0:00:02 elapsed' for a stage without a unit; 'done in ...' at its end. The
    rate is the stage's mean so far: steady, unlike an estimate over the last few reports."""
    finished = total > 0 and done >= total
    if not unit:
        return f"done in {_clock(elapsed)}" if finished else f"{_clock(elapsed)} elapsed"
    text = f"{done}/{total} {unit}"
    # Early on the mean says little (the first report comes after one subimage).
    rate = done / elapsed if done > 0 and elapsed >= (0.1 if finished else 1.0) else None
    if finished:
        text += f", done in {_clock(elapsed)}"
        return text + (f" ({rate:.1f} {unit}/s)" if rate else "")
    if rate:
        text += f", {rate:.1f} {unit}/s"
    text += f", {_clock(elapsed)} elapsed"
    if rate:
        text += f", {_clock((total - done) / rate)} remaining"
    return text


class StageProgress:
    """`progress(stage, done, total)` for the engines, plus `setup(text)` for what comes first.

    A stage whose `done` goes back (the next scene of a batch) starts over.
    """

    def __init__(self, terminal: bool | None = None) -> None:
        if terminal is None:
            from rich.console import Console

            terminal = Console(stderr=True).is_terminal
        self.terminal = terminal
        self._status: Any = None
        self._bars: Any = None
        self._tasks: dict[str, Any] = {}
        # stage -> [started, last line written, last done] for plain lines
        self._lines: dict[str, list[float]] = {}

    # -- set-up ---------------------------------------------------------------------------
    def setup(self, text: str) -> None:
        """Say what the run is doing before it counts anything. Only a terminal shows it, and
        only until the first report: it leaves no line behind."""
        if not self.terminal or self._bars is not None:
            return
        if self._status is None:
            from rich.console import Console

            self._status = Console(stderr=True).status(text, spinner="dots")
            self._status.start()
        else:
            self._status.update(text)

    def _end_setup(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    # -- stages ---------------------------------------------------------------------------
    def __call__(self, stage: str, done: int, total: int) -> None:
        if self.terminal:
            self._bar(stage, done, total)
        else:
            self._line(stage, done, total)

    def _bar(self, stage: str, done: int, total: int) -> None:
        if self._bars is None:
            self._end_setup()  # two live displays cannot share a console
            self._bars = _stage_bars()
            self._bars.start()
        unit = STAGE_UNITS.get(stage, "")
        task = self._tasks.get(stage)
        if task is None:
            task = self._tasks[stage] = self._bars.add_task(
                STAGE_LABELS.get(stage, stage), total=total, unit=unit)
        elif done < self._bars.tasks[task].completed:
            self._bars.reset(task, total=total)
        self._bars.update(task, completed=done, total=total)

    def _line(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        state = self._lines.get(stage)
        if state is None or done < state[2]:
            state = self._lines[stage] = [now, -LINE_PERIOD_S, -1]
        first, last_line = state[2] < 0, state[1]
        state[2] = done
        finished = done >= total
        if not (first or finished or now - last_line >= LINE_PERIOD_S):
            return
        state[1] = now
        label, unit = STAGE_LABELS.get(stage, stage), STAGE_UNITS.get(stage)
        text = _counted(unit, done, total, now - state[0])
        if first and not finished:
            text = f"started, {text}" if unit else "started"
        click.echo(f"{label}: {text}", err=True)

    def close(self) -> None:
        self._end_setup()
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


class _Quiet:
    def setup(self, text: str) -> None:
        pass

    def __call__(self, stage: str, done: int, total: int) -> None:
        pass


def _stage_bars() -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn
    from rich.table import Column
    from rich.text import Text

    class Counted(ProgressColumn):
        """'12/40 subimages, 3.1 subimages/s, 0:00:04 elapsed, 0:00:09 remaining'."""

        def render(self, task) -> Text:
            # A finished task's clock keeps running in rich; its finishing time does not.
            elapsed = task.finished_time if task.finished_time is not None else task.elapsed
            return Text(_counted(task.fields.get("unit"), int(task.completed),
                                 int(task.total or 0), elapsed or 0.0))

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=24),
        # Never wrapped: a wrapped column turns one bar into two lines on a narrow terminal.
        Counted(table_column=Column(no_wrap=True)),
    )
    return Progress(*columns, console=Console(stderr=True), transient=False)


@contextlib.contextmanager
def progress_reporter(quiet: bool = False, terminal: bool | None = None) -> Iterator[Any]:
    """A StageProgress on stderr (a no-op when quiet), closed on the way out."""
    if quiet:
        yield _Quiet()
        return
    reporter = StageProgress(terminal)
    try:
        yield reporter
    finally:
        reporter.close()
