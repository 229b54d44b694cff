"""A command line as a request: the options named after a request's fields, over the fields of
`--request FILE|-` when one is given.

`geoddu segment` and `geoddu train` name each option that sets a request field after that field
(``--min-area`` is ``vector_min_area``, ``-o`` of train ``run_dir``), so the command line maps
onto the request by name, and only the options given on it count: one left off means the
request's (or the engine's) default, as it does in the Python API.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click
from click.core import ParameterSource

from geoddu.errors import GeodduError
from geoddu.request_base import JsonRequest, read_json


def given(ctx: click.Context, name: str) -> bool:
    """Whether the option ``name`` was given on the command line (not left at its default)."""
    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)


def request_fields(ctx: click.Context, request: type[JsonRequest],
                   request_file: str | None) -> dict[str, Any]:
    """The fields of ``request_file`` (JSON, '-' for stdin) with the options given on the
    command line over them."""
    fields: dict[str, Any] = {}
    if request_file is not None:
        # Bytes: read_json names a file that is not UTF-8 in its one line.
        with click.open_file(request_file, "rb") as f:
            fields = read_json(f.read())
    # Options only: a command's arguments (segment's SRC, several rasters) are its own.
    options = {p.name for p in ctx.command.params if isinstance(p, click.Option)}
    fields.update({name: ctx.params[name] for name in request.field_names()
                   if name in options and given(ctx, name)})
    return fields


@contextlib.contextmanager
def error_events(enabled: bool) -> Iterator[None]:
    """With --progress json, a GeodduError is also an ``error`` event, so that the reading
    program learns of it in its terms; the one-line 'Error: ...' follows as always."""
    try:
        yield
    except GeodduError as exc:
        if enabled:
            from geoddu.events import emit_json, error_event

            emit_json(error_event(str(exc)))
        raise
