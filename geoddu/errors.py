"""Errors that the fronts (CLI, QGIS) show to users as one line, without a traceback, and the
words they are made of when a field of a file read from a stranger (a checkpoint, a model
card) is wrong: 'FILE: FIELD: problem', the value shown short. No torch, no numpy: the card's
reader runs in the QGIS plugin without them."""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn


class GeodduError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class Cancelled(GeodduError):
    """The caller's cancellation check asked the run to stop; nothing was written."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line user errors."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else exc.__class__.__name__


class GeodduWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one
    'Warning: ...' line), e.g. a scene unlike the data the model was trained on."""


Where = str | os.PathLike | None


def fail(where: Where, field: str, problem: str) -> NoReturn:
    """Raise 'WHERE: FIELD: problem' (WHERE and FIELD left out when empty)."""
    parts = [str(p) for p in (where, field) if p not in (None, "")]
    raise GeodduError(": ".join([*parts, problem]))


class Fail:
    """`fail` bound to one file: Fail(path)(field, problem)."""

    def __init__(self, where: Where) -> None:
        self.where = where

    def __call__(self, field: str, problem: str) -> NoReturn:
        fail(self.where, field, problem)


def show(value: Any, limit: int = 40) -> str:
    """A value for a one-line message: repr keeps it on one line, the cut keeps it short (a
    tensor by its shape)."""
    torch = sys.modules.get("torch")  # a tensor can only be here if torch is loaded
    if torch is not None and isinstance(value, torch.Tensor):
        text = f"a tensor {tuple(value.shape)}"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def few(keys: list[str], n: int = 3) -> str:
    """The first `n` of many names, and how many more."""
    shown = ", ".join(keys[:n])
    return shown + (f" (and {len(keys) - n} more)" if len(keys) > n else "")


def kind_of(value: Any) -> str:
    """'a str', 'an int', 'None': what a value is, for a one-line message."""
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
