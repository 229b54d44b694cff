#!/usr/bin/env python3
"""Write the release constraints: geoddu's runtime dependency closure pinned with ``==``.

Run at release with the Python of an environment like the one the QGIS plugin's *Set up engine*
makes (the reference: Debian 12's QGIS Python 3.11 with ``--system-site-packages``, QGIS's numpy
and torch 2.13.0; ``plugins/qgis/run_tests.sh`` builds one in ``plugins/qgis/build/qgis-env``):

    python3 tools/pin_constraints.py --python plugins/qgis/build/qgis-env/bin/python

It walks the requirements of pyproject's ``[project] dependencies`` through the installed
distributions' metadata (``importlib.metadata``, markers evaluated in that Python), pins the
installed versions, and adds ``--hash=sha256:...`` for each file pip downloads for that pin on
this platform (``pip download --no-deps``). torch gets no hash: the set-up takes it from
PyTorch's own index (CPU or CUDA build), whose files are not the default registry's. The output
(default ``geoddu/assets/constraints.txt``) ships in the geoddu wheel and in the plugin zip.

Usage: python3 tools/pin_constraints.py [--python PY] [-o OUT] [--no-hashes]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "geoddu" / "assets" / "constraints.txt"
# torch is pinned to what CI installs (.ci/run), without a hash (see the docstring).
NO_HASH = {"torch": "comes from PyTorch's own index (CPU or CUDA build), not hashed here"}

# Runs inside the target Python: prints {name: version} for the closure of the requirements in
# argv[1] (JSON). Uses `packaging` if it is there, else pip's copy (every venv has pip).
_WALK = r"""
import json, sys
import importlib.metadata as md
try:
    from packaging.requirements import Requirement
except ImportError:
    from pip._vendor.packaging.requirements import Requirement

def norm(name):
    return name.lower().replace("_", "-").replace(".", "-")

todo = [Requirement(r) for r in json.loads(sys.argv[1])]
found, missing = {}, []
while todo:
    req = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    key = norm(req.name)
    if key in found:
        continue
    try:
        dist = md.distribution(req.name)
    except md.PackageNotFoundError:
        missing.append(req.name)
        continue
    found[key] = {"name": dist.metadata["Name"], "version": dist.version}
    todo += [Requirement(r) for r in (dist.requires or [])]
sysconfig = __import__("sysconfig")
print(json.dumps({"pins": found, "missing": missing,
                  "platform": f"sys_platform={sys.platform} "
                              f"platform_machine={__import__('platform').machine()} "
                              f"python_version={sys.version_info[0]}.{sys.version_info[1]}"}))
"""


def project_requirements() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return list(tomllib.load(fh)["project"]["dependencies"])


def closure(python: str) -> dict:
    done = subprocess.run([python, "-c", _WALK, json.dumps(project_requirements())],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pin_constraints: {python} cannot list its packages: "
                         + (done.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(done.stdout)


def file_hashes(python: str, name: str, version: str) -> list[str]:
    """sha256 of the file(s) pip downloads for ``name==version`` here (what ``pip hash``
    prints); [] when pip cannot get it."""
    with tempfile.TemporaryDirectory(prefix="geoddu-pin-") as tmp:
        for binary in (["--only-binary=:all:"], []):  # a wheel, else what there is
            done = subprocess.run(
                [python, "-m", "pip", "download", "--no-deps", "-q",
                 "--disable-pip-version-check", *binary, f"{name}=={version}", "-d", tmp],
                capture_output=True, text=True)
            files = sorted(Path(tmp).iterdir())
            if done.returncode == 0 and files:
                return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]
    return []


def render(found: dict, python: str, hashes: bool) -> str:
    pins = found["pins"]
    lines = [
        "# geoddu's runtime dependencies, pinned at release by tools/pin_constraints.py.",
        "# Made from an environment like the one the QGIS plugin's Set up engine makes.",
        f"# platform: {found['platform']}",
        "# Hashes are of the files pip picks for that platform; another platform's wheels",
        "# have other hashes (the set-up checks them only where the platform matches).",
    ]
    body = []
    for key in sorted(pins):
        if key == "geoddu":
            continue
        name, version = pins[key]["name"], pins[key]["version"].split("+")[0]
        line = f"{name}=={version}"
        why = NO_HASH.get(key)
        if hashes and why is None:
            digests = file_hashes(python, name, version)
            if digests:
                line += "".join(f" --hash=sha256:{d}" for d in digests)
            else:
                why = "pip could not download it here, so no hash"
        elif not hashes:
            why = None
        if why:
            body.append(f"# {name}: no hash: {why}")
        body.append(line)
        print(line.split(" ")[0], file=sys.stderr)
    return "\n".join(lines + body) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable,
                        help="the Python whose environment is pinned (default: this one)")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUT,
                        help="file to write (default: %(default)s)")
    parser.add_argument("--no-hashes", action="store_true", help="pins only, no downloads")
    args = parser.parse_args(argv)
    found = closure(args.python)
    if found["missing"]:
        raise SystemExit("pin_constraints: not installed in that environment: "
                         + ", ".join(sorted(found["missing"])))
    text = render(found, args.python, hashes=not args.no_hashes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output} ({text.count('==')} pins)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
