#!/usr/bin/env python3
"""Build the installable QGIS plugin zip: plugins/qgis/build/geoddu_qgis.zip.

Install it in QGIS with Plugins > Manage and Install Plugins > Install from ZIP. The zip holds one
folder, geoddu_qgis/ (the plugin's code, metadata.txt, icon, README and the project's LICENSE if
there is one), without caches. Entries are sorted and time-stamped with the newest source file,
so the same sources give the same zip.

Usage: python3 plugins/qgis/build_zip.py [-o OUT.zip]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN = HERE / "geoddu_qgis"
ROOT = HERE.parents[1]
EXCLUDE_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache"}
EXCLUDE_SUFFIXES = {".pyc", ".pyo", ".orig", ".rej", ".swp"}
EXTRAS = {HERE / "README.md": "README.md", ROOT / "LICENSE": "LICENSE"}


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


def build(out: Path) -> Path:
    files = plugin_files()
    for required in ("__init__.py", "metadata.txt", "icon.png"):
        if not (PLUGIN / required).is_file():
            raise SystemExit(f"build_zip: {PLUGIN / required} is missing")
    newest = max(path.stat().st_mtime for path, _ in files)
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
    args = parser.parse_args(argv)
    out = build(args.output)
    with zipfile.ZipFile(out) as archive:
        count = len(archive.namelist())
    print(f"wrote {out} ({count} files, {out.stat().st_size // 1024} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
