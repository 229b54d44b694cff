"""The `geoddu` command: one click group, one module per subcommand (like rasterio's `rio`)."""

from __future__ import annotations

import sys

import click

from geoddu import __version__
from geoddu.errors import GeodduError

from . import demo, evaluate, info, init, segment, synth, train, vectorize


class GeodduGroup(click.Group):
    """Turns user errors into one line on stderr and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GeodduError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Interrupted; no output was written.", err=True)
            sys.exit(130)


@click.group(cls=GeodduGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="geoddu")
def cli() -> None:
    """Segment huge GeoTIFFs with DDU-Net, a domain-decomposition U-Net.

    Start with `geoddu demo`; see `geoddu COMMAND --help` for each command.
    """


cli.add_command(info.info)
cli.add_command(init.init)
cli.add_command(segment.segment)
cli.add_command(vectorize.vectorize)
cli.add_command(synth.synth)
cli.add_command(train.train)
cli.add_command(evaluate.evaluate)
cli.add_command(demo.demo)
