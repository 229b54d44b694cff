"""Model cards: what a checkpoint was trained on, how well it does, and who may use it how.

The card is the optional ``"card"`` entry of a checkpoint (docs/model-cards.md): a plain dict
of JSON values, so that it loads with ``torch.load(weights_only=True)``, goes into ONNX
metadata as JSON and prints anywhere. ``geoddu train`` fills the automatic fields; the user
fields come from ``--card FILE`` or ``geoddu card --set``; :func:`geoddu.checkpoint.update_card`
lets other code (``geoddu assess``) add figures.

Every field is checked when a card is read or written (:func:`check_card`): a card is text a
stranger may have written, so unknown keys, wrong types, huge strings and deep nesting are one
error line, never a slow or exhausted reader. No torch here: `geoddu card --help` and the
QGIS plugin import this module.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .card_sections import check_accuracy, check_test
from .errors import GeodduError, fail, kind_of, show

# Fields the user writes (--card FILE, `geoddu card --set`): each text, authors text or a list.
USER_FIELDS = ("description", "license", "citation", "authors", "intended_use", "limitations")
# Fields geoddu writes: training fills all but "accuracy", which `geoddu assess --into` (through
# update_card) adds.
AUTO_FIELDS = (
    "data_source", "bands", "band_names", "pixel_size", "crs_units", "normalization", "classes",
    "metrics", "test", "training_time_s", "hardware", "versions", "date", "accuracy",
)
FIELDS = USER_FIELDS + AUTO_FIELDS

# The kind of value each field holds (see _check_field).
_KINDS: dict[str, str] = {
    **{k: "text" for k in USER_FIELDS},
    "authors": "texts",
    "data_source": "dict",
    "bands": "list",
    "band_names": "texts-or-none",
    "pixel_size": "pair-or-none",
    "crs_units": "text-or-none",
    "normalization": "dict",
    "classes": "list",
    "metrics": "dict",
    "test": "test",
    "training_time_s": "number",
    "hardware": "dict",
    "versions": "dict",
    "date": "text",
    "accuracy": "accuracy",
}

# Limits: a card describes a model, it is not a data store. Well above any honest card, well
# below what would make `geoddu info` slow or a checkpoint balloon.
MAX_TEXT = 20_000  # characters per string (a long description or BibTeX entry fits)
MAX_ITEMS = 10_000  # entries per list or dict
MAX_DEPTH = 8  # nesting levels below the card itself
# Values in all: YAML aliases and pickle's memo can share one list many times over, so a small
# file can stand for billions of values ("billion laughs"); counting them bounds every walk.
MAX_VALUES = 200_000
MAX_CARD_BYTES = 1_000_000  # the whole card as JSON
MAX_FILE_BYTES = 256_000  # a --card file


def check_card(card: Any, where: str | os.PathLike | None = None) -> dict[str, Any]:
    """A plain, checked copy of `card`; the first problem is one GeodduError line naming
    `where` and the field ("model.pt: card.license: must be text, not 3")."""
    if not isinstance(card, Mapping):
        fail(where, "card", f"must be a dict of fields, not {kind_of(card)}")
    unknown = [k for k in card if k not in FIELDS]
    if unknown:
        fail(where, "card", f"unknown field(s) {', '.join(show(k) for k in unknown[:3])} "
                            f"(known: {', '.join(FIELDS)})")
    plain = {}
    budget = [MAX_VALUES]
    for key, value in card.items():
        _check_value(where, f"card.{key}", value, 0, budget)
        _check_field(where, key, value)
        plain[key] = _plain(value)
    size = len(json.dumps(plain))
    if size > MAX_CARD_BYTES:
        fail(where, "card", f"{size:,} bytes as JSON, more than the {MAX_CARD_BYTES:,} allowed")
    return plain


def check_user_fields(fields: Any, where: str | os.PathLike | None = None) -> dict[str, Any]:
    """Like check_card, for the fields a user may write (--card FILE, --set)."""
    if isinstance(fields, Mapping):
        others = [k for k in fields if k not in USER_FIELDS]
        if others:
            fail(where, "card", f"unknown field(s) {', '.join(show(k) for k in others[:3])} "
                                f"(a card file holds {', '.join(USER_FIELDS)})")
    return check_card(fields, where)


def user_fields(card: Mapping[str, Any] | None) -> dict[str, Any]:
    """The user's part of a card (what survives retraining or --resume)."""
    return {k: v for k, v in (card or {}).items() if k in USER_FIELDS}


def read_card_file(path: str | os.PathLike) -> dict[str, Any]:
    """The user fields of a --card file: YAML (a safe loader: no tags, no code) or JSON, which
    is YAML too. Size is checked before parsing, nesting after (deep input is refused by the
    parser's recursion limit or by check_card)."""
    import yaml

    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise GeodduError(f"{path}: {size:,} bytes, more than the {MAX_FILE_BYTES:,} a card "
                              f"file may have")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GeodduError(f"{path}: cannot read card: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise GeodduError(f"{path}: not a text file (UTF-8)") from exc
    try:
        fields = yaml.safe_load(text)
    except RecursionError as exc:
        raise GeodduError(f"{path}: nested too deeply") from exc
    except yaml.YAMLError as exc:
        line = str(exc).replace("\n", " ")
        raise GeodduError(f"{path}: not YAML or JSON ({show(line, 120)})") from exc
    if fields is None:
        return {}
    return check_user_fields(fields, path)


def parse_assignment(text: str) -> tuple[str, Any]:
    """`geoddu card --set key=value`: ("authors", ["A", "B"]) for authors="A; B"."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise GeodduError(f"--set {text!r}: use KEY=VALUE, e.g. --set license=CC-BY-4.0")
    if key not in USER_FIELDS:
        raise GeodduError(f"--set {key}: not a user field (one of {', '.join(USER_FIELDS)})")
    if key == "authors":
        return key, [a.strip() for a in value.split(";") if a.strip()]
    return key, value


def card_lines(card: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(field, text) rows for printing a card: user fields first, then geoddu's."""
    rows = []
    for key in FIELDS:
        if key not in card:
            continue
        rows.append((key, _text(key, card[key])))
    return rows


def no_card_line(title: str) -> str:
    """What `geoddu card -m`, `geoddu info -m` and the QGIS plugin say of a checkpoint without
    a card."""
    return (f"{title}: no model card (set fields with `geoddu card -m {title} --set "
            f"description=...`)")


def card_text(card: Mapping[str, Any], title: str) -> str:
    """The card as plain text: a heading, then one ``field: value`` line per row of
    :func:`card_lines` (the rows `geoddu info -m` tabulates). For logs without a table, such
    as QGIS's Processing log (`geoddu card --text`)."""
    if not card:
        return no_card_line(title)
    return "\n".join([f"Model card of {title}",
                      *(f"  {key}: {text}" for key, text in card_lines(card))])


def card_html(card: Mapping[str, Any], title: str) -> str:
    """The card as a self-contained HTML page (no scripts, no external files): the rows of
    :func:`card_lines`, escaped (a card is text a stranger may have written)."""
    import html

    name = html.escape(title)
    if card:
        rows = "".join(f"<tr><th>{html.escape(key)}</th><td>{html.escape(text)}</td></tr>"
                       for key, text in card_lines(card))
        body = f"<table>{rows}</table>"
    else:
        body = f"<p>{html.escape(no_card_line(title))}</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Model card of {name}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #bbb;padding:.3em .6em;
text-align:left;vertical-align:top}}th{{background:#f3f3f3}}td{{white-space:pre-wrap}}</style>
</head><body><h1>Model card of {name}</h1>
{body}
</body></html>
"""


def _text(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "authors" and isinstance(value, list):
        return "; ".join(value)
    if key == "pixel_size" and isinstance(value, list):
        return " x ".join(f"{v:g}" for v in value)
    if key == "training_time_s":
        return f"{value:.1f} s"
    if key == "accuracy" and isinstance(value, Mapping):
        return accuracy_text(value)
    if key == "test" and isinstance(value, Mapping):
        return test_text(value)
    if key == "classes" and isinstance(value, list):
        return ", ".join(str(c.get("name", c)) if isinstance(c, Mapping) else str(c)
                         for c in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(_short(v) for v in value)
    return str(value)


def _pm(figure: Mapping[str, Any], digits: int = 3) -> str:
    """"0.912 ± 0.031" from {"estimate", "ci"}; "-" where the sample gave none."""
    value, ci = figure.get("estimate"), figure.get("ci")
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if ci is None else f"{value:,.{digits}f} ± {ci:,.{digits}f}"


def accuracy_text(acc: Mapping[str, Any]) -> str:
    """One paragraph: the overall figures and what they rest on, then each class."""
    head = (f"overall accuracy {_pm(acc['overall_accuracy'])} (95%), "
            f"{acc['sample_size']:,} {acc['sample_unit']}, {acc['design']} design; "
            f"{acc['map']} against {acc['reference']}, {acc['date']}; quantity / allocation "
            f"disagreement {_fig(acc['quantity_disagreement'])} / "
            f"{_fig(acc['allocation_disagreement'])}")
    rows = [f"{c['name']}: user's {_pm(c['users_accuracy'])}, producer's "
            f"{_pm(c['producers_accuracy'])}, area {_pm(c['area_ha'], 1)} ha "
            f"(mapped {c['mapped_area_ha']:,.1f})" for c in acc["classes"]]
    return "; ".join([head, *rows])


def test_text(test: Mapping[str, Any]) -> str:
    if not test.get("evaluated"):
        return f"not evaluated: {test.get('reason')}"
    iou = ", ".join(f"{k} {_fig(v)}" for k, v in test["iou"].items())
    return (f"mIoU {_fig(test['miou'])}, overall accuracy {_fig(test['overall_accuracy'])} "
            f"on {test['patches']:,} test patches ({test['pixels']:,} px), weights of epoch "
            f"{test['epoch']}; IoU {iou}")


def _fig(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, Mapping | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _check_value(where: Any, field: str, value: Any, depth: int, budget: list[int]) -> None:
    """JSON values only, within the limits; the recursion is bounded by MAX_DEPTH and the
    walk by `budget` (values left to look at)."""
    budget[0] -= 1
    if budget[0] < 0:
        fail(where, "card", f"more than {MAX_VALUES:,} values")
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            fail(where, field, f"must be a finite number, not {value}")
        return
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            fail(where, field, f"{len(value):,} characters, more than the {MAX_TEXT:,} allowed")
        return
    if isinstance(value, list | tuple | Mapping):
        if depth >= MAX_DEPTH:
            fail(where, field, f"nested more than {MAX_DEPTH} levels deep")
        if len(value) > MAX_ITEMS:
            fail(where, field, f"{len(value):,} entries, more than the {MAX_ITEMS:,} allowed")
        if isinstance(value, Mapping):
            for k, v in value.items():
                if not isinstance(k, str) or len(k) > 200:
                    fail(where, field, f"keys must be short text, not {show(k)}")
                _check_value(where, f"{field}.{k}", v, depth + 1, budget)
        else:
            for n, v in enumerate(value):
                _check_value(where, f"{field}[{n}]", v, depth + 1, budget)
        return
    fail(where, field, f"must be text, a number, a list or a dict, not {kind_of(value)}")


def _check_field(where: Any, key: str, value: Any) -> None:
    kind, field = _KINDS[key], f"card.{key}"
    # The structured sections have their own shape, checked key by key.
    if kind == "accuracy":
        check_accuracy(value, where)
        return
    if kind == "test":
        check_test(value, where)
        return
    if kind.endswith("-or-none"):
        if value is None:
            return
        kind = kind[: -len("-or-none")]
    if kind == "text" and not isinstance(value, str):
        fail(where, field, f"must be text, not {show(value)}")
    if kind == "texts" and not (isinstance(value, str) or (
            isinstance(value, list | tuple) and all(isinstance(v, str) for v in value))):
        fail(where, field, f"must be text or a list of texts, not {show(value)}")
    if kind == "dict" and not isinstance(value, Mapping):
        fail(where, field, f"must be a dict, not {kind_of(value)}")
    if kind == "list" and not isinstance(value, list | tuple):
        fail(where, field, f"must be a list, not {kind_of(value)}")
    if kind == "number" and not (isinstance(value, int | float) and not isinstance(value, bool)
                                 and value >= 0):
        fail(where, field, f"must be a number of at least 0, not {show(value)}")
    if kind == "pair" and not (
            isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0
                    for v in value)):
        fail(where, field, f"must be [x, y], two numbers above 0, or None, not {show(value)}")


def _plain(value: Any) -> Any:
    """Lists for tuples, dicts for mappings: what torch's weights_only loader and JSON take."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
