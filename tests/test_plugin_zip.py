"""The QGIS plugin zip against the rules of the QGIS plugin repository (plugins.qgis.org): one
top-level folder named like the package, metadata.txt with the mandatory fields, no compiled or
hidden files, a GPL-compatible licence inside, and under the upload limit. No QGIS needed."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUILD_ZIP = ROOT / "plugins" / "qgis" / "build_zip.py"
PACKAGE = "geoddu_qgis"
# The repository's upload limit as we know it (25 MB); its documentation was not at hand.
MAX_BYTES = 25 * 1000 * 1000
MANDATORY = ("name", "qgisMinimumVersion", "description", "about", "version", "author",
             "email", "repository")
RECOMMENDED = ("tracker", "homepage")
COMPILED = (".pyc", ".pyo", ".so", ".dll", ".pyd", ".exe", ".dylib", ".o")


@pytest.fixture(scope="module")
def plugin_zip(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zip") / f"{PACKAGE}.zip"
    done = subprocess.run([sys.executable, str(BUILD_ZIP), "-o", str(out)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_one_folder_named_like_the_package(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
        assert archive.testzip() is None
    assert {name.split("/", 1)[0] for name in names} == {PACKAGE}
    assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", PACKAGE)  # importable by QGIS
    for required in ("__init__.py", "metadata.txt", "icon.png", "LICENSE", "constraints.txt"):
        assert f"{PACKAGE}/{required}" in names, required


def test_metadata_has_the_mandatory_fields(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        text = archive.read(f"{PACKAGE}/metadata.txt").decode("utf-8")
        names = archive.namelist()
    meta = configparser.ConfigParser(interpolation=None)
    meta.optionxform = str  # field names are case-sensitive
    meta.read_string(text)
    general = meta["general"]
    for key in MANDATORY + RECOMMENDED:
        assert general.get(key, "").strip(), f"metadata.txt: {key} is missing or empty"
    assert re.fullmatch(r"3\.\d+(\.\d+)?", general["qgisMinimumVersion"])
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", general["version"])
    assert re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", general["email"])
    for key in ("repository", "tracker", "homepage"):
        assert general[key].startswith("https://"), key
    assert len(general["about"]) > len(general["description"]) > 20
    assert f"{PACKAGE}/{general['icon']}" in names


def test_no_compiled_or_hidden_files(plugin_zip):
    with zipfile.ZipFile(plugin_zip) as archive:
        names = archive.namelist()
    compiled = [n for n in names if n.lower().endswith(COMPILED) or "__pycache__" in n]
    hidden = [n for n in names if any(part.startswith(".") for part in n.split("/"))]
    assert not compiled and not hidden, compiled + hidden


def test_licence_inside_is_gpl_compatible(plugin_zip):
    """The repository takes GPLv2+-compatible licences; the project is MIT, which is."""
    with zipfile.ZipFile(plugin_zip) as archive:
        licence = archive.read(f"{PACKAGE}/LICENSE").decode("utf-8")
    assert licence == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") or "GNU GENERAL PUBLIC LICENSE" in licence
    assert "Permission is hereby granted, free of charge" in licence or "GPL" in licence


def test_size_under_the_repository_limit(plugin_zip):
    assert plugin_zip.stat().st_size < MAX_BYTES
