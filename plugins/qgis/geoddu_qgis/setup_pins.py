"""The release's pins (constraints.txt) as the set-up uses them: read (as ``geoddu.pins``
reads them; the plugin cannot import geoddu), handed to pip without hashes, and the files pip
downloaded checked against the hashes from pip's ``--report`` (geoddu_qgis.engine_setup's
docstring says why). Standard library only."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from typing import Any

from .setup_process import Log, SetupError, child_env, no_window


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    hashes: tuple = ()


def parse_constraints(text: str) -> list[Pin]:
    """The ``name==version [--hash=sha256:...]`` lines of a constraints file (as
    ``geoddu.pins``; this module cannot import geoddu)."""
    pins = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;]+)", line)
        if match:
            hashes = tuple(h.split(":", 1)[-1] for h in line.split() if h.startswith("--hash="))
            pins.append(Pin(match.group(1), match.group(2), hashes))
    return pins


def pinned_platform(text: str) -> str | None:
    """The ``# platform: ...`` line the pins (and their hashes) were made on."""
    match = re.search(r"^# platform: (.+)$", text, re.M)
    return match.group(1).strip() if match else None


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def base_version(version: str) -> str:
    return version.split("+", 1)[0]


def write_pins(path: str, pins: list[Pin], source: str) -> None:
    """The pins as pip is given them: without hashes (see the module docstring)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"# from {source}, without hashes and the plan's own requirements\n")
        fh.writelines(f"{p.name}=={p.version}\n" for p in pins)


def pip_has_report(python: str) -> bool:
    """Whether the environment's pip has ``install --report`` (pip 22.2)."""
    try:
        done = subprocess.run([python, "-m", "pip", "--version"], capture_output=True,
                              text=True, timeout=60, env=child_env(), **no_window())
        major, minor = (int(x) for x in done.stdout.split()[1].split(".")[:2])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return False
    return (major, minor) >= (22, 2)


def check_hashes(plan: Any, pins: list[Pin], log: Log) -> dict:
    """Each file pip downloaded for a pinned package (pip's report at ``plan.report_file()``)
    against the release's hashes (``plan.constraints``): "ok", "other file" or "no hash".
    Another file on the pins' own platform is an error."""
    try:
        with open(plan.report_file(), encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        log("No pip report (pip older than 22.2): the downloaded files' hashes are not checked")
        return {}
    with open(plan.constraints, encoding="utf-8") as fh:
        platform = pinned_platform(fh.read())
    env = report.get("environment", {})
    here = (f"sys_platform={env.get('sys_platform')} "
            f"platform_machine={env.get('platform_machine')} "
            f"python_version={env.get('python_version')}")
    by_name = {canonical(p.name): p for p in pins}
    checks, wrong = {}, []
    for item in report.get("install", []):
        name = item.get("metadata", {}).get("name", "")
        pin = by_name.get(canonical(name))
        archive = (item.get("download_info") or {}).get("archive_info") or {}
        digest = (archive.get("hashes") or {}).get("sha256") or archive.get("hash", "")
        digest = digest.split("=", 1)[-1]
        if pin is None or not digest:
            continue
        if not pin.hashes:
            checks[pin.name] = "no hash"
        elif digest in pin.hashes:
            checks[pin.name] = "ok"
        else:
            checks[pin.name] = "other file"
            wrong.append(f"{name} {item['metadata'].get('version')} (sha256 {digest})")
    if wrong and platform == here:
        raise SetupError("files that do not match the release's hashes: " + ", ".join(wrong))
    if wrong:
        log(f"Not the release's files (this is {here}, the hashes are for {platform}): "
            + ", ".join(wrong))
    return checks
