"""JSON and YAML from users' files (requests, classes files, cards, STAC items), parsed with
one set of rules: text that is not UTF-8, not JSON/YAML, or nested deeper than Python's
parsers can recurse (a fuzzed request of 10,000 '[' ended in a RecursionError traceback) is
one :class:`GeodduError` line naming the file.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import GeodduError

__all__ = ["parse_json", "parse_yaml"]


def _text(data: bytes | str, what: str, kind: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise GeodduError(f"{what}: not valid {kind} (not UTF-8 text)") from exc


def parse_json(data: bytes | str, what: str) -> Any:
    """The document in `data`; `what` names it in the error line."""
    text = _text(data, what, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeodduError(f"{what}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise GeodduError(f"{what}: not valid JSON (nested too deeply)") from exc


def parse_yaml(data: bytes | str, what: str) -> Any:
    """YAML (a superset of JSON) with PyYAML's safe loader: no Python objects, no code. Aliases
    are shared, not copied, so an alias bomb costs no memory here; the checks of each format
    refuse what is not the expected shape."""
    import yaml

    text = _text(data, what, "YAML")
    try:
        return yaml.safe_load(text)
    except RecursionError as exc:
        raise GeodduError(f"{what}: not valid YAML (nested too deeply)") from exc
    except yaml.YAMLError as exc:
        line = " ".join(str(exc).split())
        raise GeodduError(f"{what}: not valid YAML ({line[:160]})") from exc
