"""The `geoddu` command: one click group, one module per subcommand (like rasterio's `rio`)."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading
import warnings

import click

from geoddu.errors import GeodduError, GeodduWarning, first_line
from geoddu.io.atomic import os_error_line
from geoddu.version import __version__

from . import (
    assess,
    card,
    convert,
    demo,
    evaluate,
    export,
    info,
    init,
    native_stderr,
    sample,
    segment,
    synth,
    train,
    vectorize,
)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: unwound exactly like Ctrl-C, so every temporary file is removed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_show_warning = warnings.showwarning


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """GeodduWarnings are for users: one 'Warning: ...' line, no file or line number. Other
    libraries' warnings (rasterio's NotGeoreferencedWarning with its source line, say) are
    for developers: kept aside with native libraries' messages, shown if geoddu fails with a
    traceback."""
    if issubclass(category, GeodduWarning):
        click.echo(f"Warning: {_one_line(message)}", err=True)
    elif native_stderr.capturing():
        native_stderr.aside(warnings.formatwarning(message, category, filename, lineno, line))
    else:
        _show_warning(message, category, filename, lineno, file, line)


class GeodduGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        native_stderr.capture()
        native_stderr.keep_library_logs_aside()
        warnings.showwarning = _warning_line
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _raise_terminated)
        try:
            return super().invoke(ctx)
        except GeodduError as exc:
            click.echo(f"Error: {_one_line(exc)}", err=True)
            sys.exit(1)
        except click.UsageError as exc:
            # One line like every other error (click's own block is three), with the way to
            # the command's help.
            where = exc.ctx.command_path if exc.ctx is not None else "geoddu"
            click.echo(f"Error: {_one_line(exc.format_message())} (see '{where} --help')",
                       err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
            name = "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"
            click.echo(f"Interrupted{name}; no output was written.", err=True)
            sys.exit(128 + signum)
        except OSError as exc:
            # The environment, not a bug: a full disk, a vanished folder, a permission.
            what = exc.filename if exc.filename is not None else "the output"
            click.echo(f"Error: {os_error_line(exc, str(what))}", err=True)
            sys.exit(1)
        except MemoryError as exc:
            click.echo(f"Error: out of memory ({first_line(exc)})", err=True)
            sys.exit(1)
        except Exception:
            # A bug: keep the traceback, and show what native libraries said before it.
            chatter = native_stderr.captured()
            if chatter:
                click.echo(chatter.rstrip(), err=True)
            raise


@click.group(cls=GeodduGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoddu")
def cli() -> None:
    """Segment huge GeoTIFFs with DDU-Net, a domain-decomposition U-Net.

    Start with `geoddu demo`; see `geoddu COMMAND --help` for each command.
    """


cli.add_command(info.info)
cli.add_command(card.card)
cli.add_command(init.init)
cli.add_command(convert.convert)
cli.add_command(segment.segment)
cli.add_command(vectorize.vectorize)
cli.add_command(sample.sample)
cli.add_command(synth.synth)
cli.add_command(train.train)
cli.add_command(evaluate.evaluate)
cli.add_command(assess.assess)
cli.add_command(export.export)
cli.add_command(demo.demo)


def main() -> None:
    """The `geoddu` command. After a successful command the process runs its exit hooks and
    ends, without Python's teardown of every module and object (the model, torch, GDAL): that
    took 0.35 s of a 4.4 s `segment`. Every output is complete and renamed into place by then;
    a failure exits the ordinary way."""
    try:
        cli.main(prog_name="geoddu")
    except SystemExit as exc:
        if exc.code not in (0, None) or threading.active_count() > 1:
            raise
    # What the interpreter would still do at exit, but for tearing itself down: the atexit
    # hooks (weakref finalizers of temporary folders among them) and logging's flush.
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said anyway
            raise SystemExit(0) from None
    os._exit(0)
