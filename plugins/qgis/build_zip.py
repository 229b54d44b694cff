#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: plugins/qgis/build/geoddu_qgis.zip.

Install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP. The zip holds one
folder, geoddu_qgis/ (the plugin's code, metadata.txt, icon, README, the project's LICENSE and
the release pins constraints.txt), without caches. Entries are sorted and time-stamped with the
newest source file, so the same sources give the same zip.

Usage: python3 plugins/qgis/build_zip.py [-o OUT.zip]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "geoddu_qgis"
ROOT = HERE.parents[1]
# wheels/: the zip's wheel is always built afresh (build_wheel), never taken from the folder.
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "wheels"}
WHEELS = "wheels"
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
# constraints.txt: the release pins that Set up engine installs (tools/pin_constraints.py).
EXTRAS = {HERE / "README.md": "README.md", ROOT / "LICENSE": "LICENSE",
          ROOT / "geoddu" / "assets" / "constraints.txt": "constraints.txt"}


def plugin_files() -> list[tuple[Path, str]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(PLUGIN):
        dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDE_DIRS)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if path.suffix in EXCLUDE_SUFFIXES or name.startswith("."):
                continue
            files.append((path, f"{PLUGIN.name}/{path.relative_to(PLUGIN).as_posix()}"))
    for path, arcname in EXTRAS.items():
        if path.is_file() and not (PLUGIN / arcname).exists():
            files.append((path, f"{PLUGIN.name}/{arcname}"))
    return sorted(files, key=lambda item: item[1])


def _pip_python() -> str:
    """A Python with pip: this one, else python3/python on PATH."""
    if importlib.util.find_spec("pip") is not None:
        return sys.executable
    for name in ("python3", "python"):
        found = shutil.which(name)
        if found and subprocess.run([found, "-m", "pip", "--version"],
                                    capture_output=True).returncode == 0:
            return found
    raise SystemExit("build_zip: no Python with pip to build the geoddu wheel (or use --no-wheel)")


def build_wheel(out_dir: Path, epoch: int | None = None) -> Path:
    """Build geoddu's wheel from this checkout into ``out_dir``; return its path.

    ``epoch`` (default: the newest source file's time) is the wheel's timestamp
    (SOURCE_DATE_EPOCH), so the same sources give the same wheel.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if epoch is None:
        epoch = int(max(p.stat().st_mtime for p in _source_files()))
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(max(epoch, 315532800)))
    for var in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        env.pop(var, None)
    with tempfile.TemporaryDirectory(prefix="geoddu-wheel-") as tmp:
        # Built from a clean copy of the sources: a stale build/ in the checkout would add
        # modules that no longer exist, and the checkout stays untouched.
        src = Path(tmp) / "src"
        for path in _source_files():
            rel = path.relative_to(ROOT)
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / rel)
        for path in (ROOT / "README.md", ROOT / "LICENSE"):
            if path.is_file():
                shutil.copy2(path, src / path.name)
        done = subprocess.run(
            [_pip_python(), "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
             "-q", "-w", str(Path(tmp) / "dist"), str(src)], env=env, capture_output=True,
            text=True)
        wheels = sorted((Path(tmp) / "dist").glob("geoddu-*-py3-none-any.whl"))
        if done.returncode != 0 or not wheels:
            raise SystemExit("build_zip: building the geoddu wheel failed:\n"
                             + done.stdout + done.stderr)
        target = out_dir / wheels[-1].name
        shutil.copyfile(wheels[-1], target)
    return target


def _source_files() -> list[Path]:
    files = [ROOT / "pyproject.toml"]
    for package in ("geoddu", "cli"):
        files += [p for p in (ROOT / package).rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts and p.suffix not in EXCLUDE_SUFFIXES]
    return files


def build(out: Path, wheel: bool = True) -> Path:
    files = plugin_files()
    for required in ("__init__.py", "metadata.txt", "icon.png"):
        if not (PLUGIN / required).is_file():
            raise SystemExit(f"build_zip: {PLUGIN / required} is missing")
    newest = max(path.stat().st_mtime for path, _ in files)
    if wheel:
        newest = max([newest] + [p.stat().st_mtime for p in _source_files()])
        built = build_wheel(out.parent / WHEELS, epoch=int(newest))
        files = sorted(files + [(built, f"{PLUGIN.name}/{WHEELS}/{built.name}")],
                       key=lambda item: item[1])
    stamp = time.gmtime(max(newest, 315532800))[:6]  # zip cannot store dates before 1980
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, arcname in files:
            info = zipfile.ZipInfo(arcname, date_time=stamp)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (0o644 & 0xFFFF) << 16
            archive.writestr(info, path.read_bytes())
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=HERE / "build" / "geoddu_qgis.zip",
                        help="zip to write (default: %(default)s)")
    parser.add_argument("--no-wheel", action="store_true",
                        help="leave out the geoddu wheel (Set up engine then needs a checkout)")
    args = parser.parse_args(argv)
    out = build(args.output, wheel=not args.no_wheel)
    with zipfile.ZipFile(out) as archive:
        count = len(archive.namelist())
    print(f"wrote {out} ({count} files, {out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
