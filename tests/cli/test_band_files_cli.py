"""`geoddu segment --band-files / --stac` as users run it: the real command, one-line errors,
nothing left at the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from band_helpers import (
    local_http_env,
    range_server,
    scene_bands,
    split_bands,
    stac_item,
    write_band,
)
from click.testing import CliRunner
from geoddu.cli.main import cli
from helpers import make_checkpoint

import geoddu

GEODDU = [sys.executable, "-m", "geoddu.cli"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("m") / "model.pt")


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_stac_item_over_http_through_the_command(tmp_path, checkpoint):
    """`geoddu segment --stac URL --assets red,green,blue` reads the COGs through /vsicurl/
    and writes the map of the same bands in one local file."""
    data = scene_bands()
    scene = write_band(tmp_path / "scene.tif", data, nodata=0)
    served = tmp_path / "served"
    served.mkdir()
    split_bands(served, data, ["B04.tif", "B03.tif", "B02.tif"], cog=True)
    stac_item(served / "item.json", {"B02": ("B02.tif", "blue"), "B03": ("B03.tif", "green"),
                                     "B04": ("B04.tif", "red")})
    geoddu.segment(scene, tmp_path / "local.tif", checkpoint)
    out = tmp_path / "out" / "remote.tif"
    out.parent.mkdir()
    with range_server(served) as (url, log):
        r = subprocess.run(
            [*GEODDU, "segment", "--stac", f"{url}/item.json", "--assets", "red,green,blue",
             "-o", out, "-m", checkpoint, "-q"],
            capture_output=True, text=True, env=local_http_env(), timeout=120)
    assert r.returncode == 0, r.stderr
    assert any(m == "GET" and p == "/B04.tif" and rng for m, p, rng in log)
    np.testing.assert_array_equal(_classes(out), _classes(tmp_path / "local.tif"))
    assert sorted(p.name for p in out.parent.iterdir()) == ["remote.tif", "remote.tif.aux.xml"]


@pytest.fixture
def files(tmp_path) -> list[Path]:
    return split_bands(tmp_path, scene_bands(), ["B04.tif", "B03.tif", "B02.tif"])


@pytest.mark.parametrize(("case", "needle"), [
    ("missing", "Error: --band-files {tmp}/B09.tif: no such file"),
    ("crs", "Error: --band-files {tmp}/utm32.tif is in EPSG:32632, but the first band"),
    ("count", "Error: --band-files: 2 bands given but the model takes 3"),
    ("asset", "Error: --assets nir: {tmp}/item.json has no asset or band of that name"),
    ("item", "Error: --stac {tmp}/none.json: No such file or directory"),
    ("src", "Error: --band-files and --stac name the scene: give no SRC with them"),
    ("output-dir", "Error: --band-files and --stac make one scene"),
])
def test_errors_are_one_line_and_leave_nothing(tmp_path, files, checkpoint, case, needle):
    b04, b03, b02 = map(str, files)
    write_band(tmp_path / "utm32.tif", scene_bands()[0], crs="EPSG:32632")
    stac_item(tmp_path / "item.json", {"B04": ("B04.tif", "red"), "B03": ("B03.tif", "green")})
    out = tmp_path / "out"
    out.mkdir()
    args = {
        "missing": ["--band-files", f"{b04},{tmp_path}/B09.tif,{b02}"],
        "crs": ["--band-files", f"{b04},{tmp_path}/utm32.tif,{b02}"],
        "count": ["--band-files", f"{b04},{b03}"],
        "asset": ["--stac", f"{tmp_path}/item.json", "--assets", "red,green,nir"],
        "item": ["--stac", f"{tmp_path}/none.json", "--assets", "red,green,blue"],
        "src": [b04, "--band-files", f"{b04},{b03},{b02}"],
        "output-dir": ["--band-files", f"{b04},{b03},{b02}", "--output-dir", str(out)],
    }[case]
    output = [] if case == "output-dir" else ["-o", str(out / "map.tif")]
    r = CliRunner().invoke(cli, ["segment", *args, *output, "-m", str(checkpoint), "-q"])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith(needle.format(tmp=tmp_path)), lines[0]
    assert list(out.iterdir()) == []
