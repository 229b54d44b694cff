"""The release pins (``geoddu/assets/constraints.txt``, written by ``tools/pin_constraints.py``)
beside what this Python has installed. Standard library only: ``geoddu info --hardware`` lists
it, and it must stay cheap to import."""

from __future__ import annotations

import importlib.metadata as md
import os
import re
from dataclasses import dataclass
from pathlib import Path

CONSTRAINTS_ENV = "GEODDU_CONSTRAINTS"
DEFAULT_CONSTRAINTS = Path(__file__).resolve().parent / "assets" / "constraints.txt"
_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple[str, ...] = ()


def constraints_path() -> Path:
    """``$GEODDU_CONSTRAINTS``, else the file shipped with geoddu."""
    return Path(os.environ.get(CONSTRAINTS_ENV) or DEFAULT_CONSTRAINTS)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_constraints(text: str) -> list[Pin]:
    """The ``name==version [--hash=sha256:...]`` lines of a constraints file."""
    pins = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = _LINE.match(line)
        if match:
            hashes = tuple(h.split(":", 1)[-1] for h in line.split() if h.startswith("--hash="))
            pins.append(Pin(match.group(1), match.group(2), hashes))
    return pins


def _base(version: str) -> str:
    return version.split("+", 1)[0]  # 2.13.0+cpu is the pinned 2.13.0


def package_versions(path: str | os.PathLike | None = None) -> dict:
    """Each pinned package: installed version, pinned version, and ``ok`` / ``differs`` /
    ``missing``. A file that cannot be read gives no rows and its reason."""
    path = Path(path) if path is not None else constraints_path()
    try:
        pins = parse_constraints(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return {"constraints": str(path), "error": exc.strerror or str(exc), "packages": []}
    rows = []
    for pin in pins:
        try:
            installed = md.version(pin.name)
        except md.PackageNotFoundError:
            installed = None
        if installed is None:
            status = "missing"
        else:
            status = "ok" if _base(installed) == _base(pin.version) else "differs"
        rows.append({"name": pin.name, "installed": installed, "pinned": pin.version,
                     "status": status})
    return {"constraints": str(path), "packages": rows}
