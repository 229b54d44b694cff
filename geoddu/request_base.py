"""What every request shares: plain fields, checked once when built, sent as one JSON object.

A request (:class:`geoddu.engine.request.SegmentRequest`, :class:`geoddu.train.request.
TrainRequest`) is a frozen dataclass that every front builds from the same field names: the CLI
from its options (each option's name is the field's), the Python API from keywords, the QGIS
plugin from its parameters, as a dict or as JSON through ``--request``. A field may declare its
check (:func:`checked`): the request applies it when built, and the CLI makes its option's
type from it, so a range or a list of choices is written once.

No torch and no I/O here: `geoddu --help` reads these.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .errors import GeodduError

__all__ = ["Check", "JsonRequest", "checked", "field_check", "read_json"]


@dataclass(frozen=True)
class Check:
    """What a field accepts: one of ``choices``, or a number in [low, high] (``low_open``:
    above low, ``high_open``: below high). ``integer``: whole numbers only."""

    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __call__(self, flag: str, value: Any) -> Any:
        """``value`` as the field keeps it; a one-line GeodduError naming ``flag`` if wrong."""
        if self.choices is not None:
            if value not in self.choices:
                raise GeodduError(f"{flag}: unknown {value!r}; choose from "
                                  f"{', '.join(self.choices)}")
            return value
        number = _number(flag, value, self.integer)
        too_low = self.low is not None and (number <= self.low if self.low_open
                                            else number < self.low)
        too_high = self.high is not None and (number >= self.high if self.high_open
                                              else number > self.high)
        if too_low or too_high:
            raise GeodduError(f"{flag} must be {self.describe()}, got {value}")
        return number

    def describe(self) -> str:
        """'at least 1', 'in [0, 1)', 'above 0', 'from 1 to 255'."""
        if self.low is not None and self.high is not None:
            if self.integer and not (self.low_open or self.high_open):
                return f"from {_fmt(self.low)} to {_fmt(self.high)}"
            return (f"in {'(' if self.low_open else '['}{_fmt(self.low)}, {_fmt(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{'above' if self.low_open else 'at least'} {_fmt(self.low)}"
        return f"{'below' if self.high_open else 'at most'} {_fmt(self.high)}"


def _fmt(value: float) -> str:
    return f"{value:g}"


def _number(flag: str, value: Any, integer: bool) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise GeodduError(f"{flag} must be a number, got {value!r}")
    if integer:
        if int(value) != value:
            raise GeodduError(f"{flag} must be a whole number, got {value}")
        return int(value)
    if not math.isfinite(value):
        raise GeodduError(f"{flag} must be a finite number, got {value}")
    return float(value)


def checked(check: Check, default: Any = None) -> Any:
    """A dataclass field whose value ``check`` accepts (None: the default, unchecked)."""
    return field(default=default, metadata={"check": check})


def field_check(cls: type, name: str) -> Check | None:
    """The check a request class declares for its field ``name``."""
    return next((f.metadata.get("check") for f in dataclasses.fields(cls) if f.name == name),
                None)


class JsonRequest:
    """A frozen dataclass of plain fields that travels as one JSON object.

    ``REQUIRED``: the fields a request cannot do without. :meth:`flag` names a field as the
    command line does, for error messages.
    """

    REQUIRED: ClassVar[tuple[str, ...]] = ()
    # Fields whose option is not --name-with-dashes.
    FLAGS: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def flag(cls, name: str) -> str:
        return cls.FLAGS.get(name) or "--" + name.replace("_", "-")

    def check_fields(self) -> None:
        """Apply every field's declared check (frozen: values are normalised in place)."""
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            check = f.metadata.get("check")
            value = getattr(self, f.name)
            if check is not None and value is not None:
                object.__setattr__(self, f.name, check(self.flag(f.name), value))

    def replace(self, **changes: Any) -> Any:
        """The same request with some fields changed (checked again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def required(cls, data: Mapping[str, Any]) -> tuple[str, ...]:
        """The fields ``data`` cannot do without (some stand in for others)."""
        return cls.REQUIRED

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.init)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields (tuples as lists)."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Any:
        """The request a front sent (JSON); unknown or missing fields are one-line errors."""
        unknown = sorted(set(data) - set(cls.field_names()))
        if unknown:
            raise GeodduError(f"request: unknown field(s) {', '.join(unknown)}")
        missing = sorted(n for n in cls.required(data) if data.get(n) is None)
        if missing:
            raise GeodduError(f"request: missing {', '.join(missing)}")
        # null means "the default", as an absent field does.
        given = {k: v for k, v in data.items() if v is not None}
        hints = typing.get_type_hints(cls)
        for name, value in given.items():
            if not _conforms(value, hints.get(name, Any)):
                shown = json.dumps(value, default=str)
                raise GeodduError(f"request: {cls.flag(name)} must be "
                                  f"{_describe(hints[name])}, got "
                                  f"{shown if len(shown) <= 60 else shown[:57] + '...'}")
        return cls(**given)

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(read_json(text))


def read_json(text: str | bytes) -> dict[str, Any]:
    """The fields of a request sent as JSON (one object), not yet checked."""
    from .documents import parse_json

    data = parse_json(text, "request")
    if not isinstance(data, dict):
        raise GeodduError("request: expected a JSON object")
    return data


# A request arrives as JSON from strangers (a QGIS plugin, a pipeline, a fuzzer): each value is
# checked against its field's annotation before the request is built, so that a list where a
# path belongs is one line, not a TypeError deep in the engine.
def _conforms(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str | os.PathLike)
    if origin in (tuple, list):
        args = typing.get_args(hint)
        # The command line's spellings, which the field parses: "1,2,3", "2x2", and for a pair
        # of whole numbers one number (2 for 2 x 2 subimages, as QGIS sends it).
        if isinstance(value, str):
            return True
        if isinstance(value, int) and not isinstance(value, bool):
            return len(args) == 2 and args[0] is int and args[1] is int
        if not isinstance(value, list | tuple):
            return False
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return all(_conforms(v, args[0] if args else Any) for v in value)
        return len(value) == len(args) and all(map(_conforms, value, args))
    if origin is dict or hint is dict:
        return isinstance(value, Mapping)
    return True  # a type JSON cannot carry (a model object): the request's own checks


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(h) for h in typing.get_args(hint) if h is not type(None)]
        return " or ".join(parts)
    if origin in (tuple, list):
        args = typing.get_args(hint)
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            plural = {int: "whole numbers", float: "numbers", str: "strings"}
            return f"a list of {plural.get(args[0], 'values') if args else 'values'}"
        return f"a list of {len(args)} values"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _plain(value: Any) -> Any:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value
