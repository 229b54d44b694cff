"""What `geoddu train` shows while it runs: the training events (geoddu.events) as rich bars and
one line per epoch on stderr, as JSON lines (--progress json), or nothing (--quiet)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import click

from geoddu.events import done_event, emit_json

from .progress import progress_bars

EventFn = Callable[[dict[str, Any]], None]


def train_display(progress: str, quiet: bool) -> Any:
    """JSON lines for ``progress == "json"`` (even when quiet: they are for a program), else
    bars and epoch lines unless ``quiet``."""
    if progress == "json":
        return JsonLines()
    return Quiet() if quiet else Bars()


class Quiet:
    @contextlib.contextmanager
    def live(self) -> Iterator[EventFn | None]:
        yield None

    def done(self, result: Any) -> None:
        pass


class JsonLines(Quiet):
    """Every event as one JSON line on stderr, the run's result as the last (``done``)."""

    @contextlib.contextmanager
    def live(self) -> Iterator[EventFn | None]:
        yield emit_json

    def done(self, result: Any) -> None:
        from geoddu.train.api import done_details, summary_line

        emit_json(done_event(summary_line(result), **done_details(result)))


class Bars(Quiet):
    """rich progress (epochs, batches with loss / LR / ETA) and one line per epoch; the summary
    on stdout at the end."""

    @contextlib.contextmanager
    def live(self) -> Iterator[EventFn | None]:
        from geoddu.train.api import metric

        state: dict = {}
        bar = progress_bars("info", transient=True)
        # In a file or a pipe a bar is not redrawn but dumped (and rich wraps long lines at
        # 80 columns): there, the epoch lines alone, each one plain line.
        terminal = bar.console.is_terminal

        def say(text: str) -> None:
            if terminal:
                bar.console.print(text)
            else:
                from rich.text import Text

                click.echo(Text.from_markup(text).plain, err=True)

        def start(info: dict) -> None:
            # Drawn only once training starts: an error while setting up (a damaged last.pt,
            # say) stays the one line on stderr, without a blank line before it.
            if terminal:
                bar.start()
                state["started"] = True
            state["epoch_task"] = bar.add_task("epochs", total=info["epochs"],
                                               completed=info["start_epoch"], info="")
            state["batch_task"] = bar.add_task("batches", total=info["batches"], info="")
            grid = "x".join(map(str, info["grid"]))
            precision = info.get("precision", "fp16" if info["amp"] else "fp32")
            amp = "" if precision == "fp32" else f", {precision} mixed precision"
            where = info["device"]
            if info.get("ranks", 1) > 1:
                s = info["spatial_ranks"]
                where = (f"{info['ranks']} ranks ({info['ranks'] // s} data x {s} spatial) "
                         f"on {where}")
            say(f"training on {where}{amp}, {grid} subimages per patch, from epoch "
                f"{info['start_epoch'] + 1}")

        def batch(event: dict) -> None:
            if event["done"] == 1:
                bar.reset(state["batch_task"], total=event["total"])
                bar.update(state["batch_task"], description=f"epoch {event['epoch']}")
            bar.update(state["batch_task"], completed=event["done"],
                       info=f"loss {event['loss']:.4f}  lr {event['lr']:.2g}")

        def validate(event: dict) -> None:
            bar.update(state["batch_task"], description="validate", completed=event["done"],
                       total=event["total"])

        def epoch(row: dict) -> None:
            bar.update(state["epoch_task"], completed=row["epoch"])
            best = "  [green]best[/green]" if row["best"] else ""
            say(f"epoch {row['epoch']:>3}/{row['epochs']}  train loss {row['train_loss']:.4f}  "
                f"val loss {row['val_loss']:.4f}  val mIoU {metric(row['val_miou'])}  lr "
                f"{row['lr']:.2g}  {row['seconds']:.1f} s{best}")

        def on_event(event: dict) -> None:
            kind, stage = event["event"], event.get("stage")
            if kind == "start":
                start(event)
            elif kind == "epoch":
                epoch(event)
            elif kind == "progress":
                (batch if stage == "train" else validate)(event)

        try:
            yield on_event
        finally:
            if state.get("started"):  # stopping a bar never started still prints a newline
                bar.stop()

    def done(self, result: Any) -> None:
        from geoddu.train.api import summary_line

        click.echo(summary_line(result))
