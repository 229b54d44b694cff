"""`--mosaic` under a real `torchrun` (2 ranks, gloo on the CPU): the seamless map and the
per-input maps equal the one-process run's, and a refused mosaic ends every rank with one
line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import TORCHRUN, TRANSFORM, rank_env, write_geotiff

import geoddu

TIMEOUT = 180  # a hang fails the test instead of the CI job
# A 96 x 120 scene cut into 2 x 2 sheets of unequal sizes, none a multiple of the 32 px
# subimages; 12 subimages, so both ranks own cells on both sides of the sheet edges.
ROWS = (0, 41, 96)
COLS = (0, 70, 120)


def _segment(n: int, *args: object, tmp: Path) -> subprocess.CompletedProcess:
    """`geoddu segment` on ``n`` ranks (1: without torchrun), temporary files in ``tmp``."""
    cmd = [*(TORCHRUN + ["--nproc-per-node", str(n)] if n > 1 else [sys.executable]),
           "-m", "geoddu.cli", "segment", *map(str, args), "--subimage-size", "32", "-q"]
    # Ranks other than 0 build their VRT in a temporary folder of their own: in ``tmp`` here,
    # so that the tests see it is gone (torchrun leaves its own torchelastic_* there).
    tmp.mkdir(exist_ok=True)
    env = {**rank_env(), "TMPDIR": str(tmp)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)


def _classes(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _leftovers(*folders: Path) -> list[str]:
    return [p.name for f in folders for p in f.rglob("*") if ".geoddu-tmp-" in p.name]


@pytest.fixture
def sheets(tmp_path):
    image = np.random.default_rng(7).integers(1, 255, (3, 96, 120), dtype=np.uint8)
    scene = write_geotiff(tmp_path / "scene.tif", image)
    folder = tmp_path / "sheets"
    folder.mkdir()
    windows = {}
    for i in range(2):
        for j in range(2):
            r0, r1, c0, c1 = ROWS[i], ROWS[i + 1], COLS[j], COLS[j + 1]
            path = write_geotiff(folder / f"sheet_{i}{j}.tif", image[:, r0:r1, c0:c1],
                                 transform=TRANSFORM * Affine.translation(c0, r0))
            windows[Path(path).name] = (slice(r0, r1), slice(c0, c1))
    return scene, folder, windows


def test_torchrun_mosaic_equals_one_process_and_the_uncut_scene(tmp_path, sheets, checkpoint):
    scene, folder, windows = sheets
    tmp = tmp_path / "tmp"
    geoddu.segment(scene, tmp_path / "whole.tif", checkpoint, subimage_size=32)
    whole = _classes(tmp_path / "whole.tif")

    r = _segment(2, folder, "--mosaic", "-o", tmp_path / "map2.tif", "-m", checkpoint, tmp=tmp)
    assert r.returncode == 0, r.stderr
    r = _segment(1, folder, "--mosaic", "-o", tmp_path / "map1.tif", "-m", checkpoint, tmp=tmp)
    assert r.returncode == 0, r.stderr
    two, one = _classes(tmp_path / "map2.tif"), _classes(tmp_path / "map1.tif")
    assert (two != one).sum() == 0
    assert (two != whole).sum() == 0

    out1, out2 = tmp_path / "out1", tmp_path / "out2"
    out1.mkdir(), out2.mkdir()
    r = _segment(2, folder, "--mosaic", "--output-dir", out2, "-m", checkpoint, tmp=tmp)
    assert r.returncode == 0, r.stderr
    r = _segment(1, folder, "--mosaic", "--output-dir", out1, "-m", checkpoint, tmp=tmp)
    assert r.returncode == 0, r.stderr
    # The same files as one process writes (each map and its .aux.xml), nothing else.
    assert sorted(p.name for p in out2.iterdir()) == sorted(p.name for p in out1.iterdir())
    assert {p.name for p in out2.glob("*.tif")} == set(windows)
    for name, (rows, cols) in windows.items():
        got = _classes(out2 / name)
        assert (got != _classes(out1 / name)).sum() == 0, name
        assert (got != whole[rows, cols]).sum() == 0, name
        with rasterio.open(out2 / name) as a, rasterio.open(folder / name) as b:
            assert (a.crs, a.transform, a.shape) == (b.crs, b.transform, b.shape)
    assert not _leftovers(tmp_path) and not list(tmp.glob("geoddu-*"))


def test_torchrun_refuses_mixed_crs_on_every_rank(tmp_path, sheets, checkpoint):
    _, folder, _ = sheets
    tmp = tmp_path / "tmp"
    out = tmp_path / "out"
    out.mkdir()
    # An output there already: rank 0 alone checks the outputs (hosts need not share a
    # disk), and every rank stops with its one line.
    (out / "sheet_01.tif").write_bytes(b"mine")
    r = _segment(2, folder, "--mosaic", "--output-dir", out, "-m", checkpoint, tmp=tmp)
    assert r.returncode != 0
    assert r.stderr.count("Error: 1 output(s) exist") == 1, r.stderr
    assert [p.name for p in out.iterdir()] == ["sheet_01.tif"]
    (out / "sheet_01.tif").unlink()
    # One sheet in another CRS: refused by the mosaic checks, on both ranks alike.
    name = "sheet_11.tif"
    with rasterio.open(folder / name) as ds:
        data, transform = ds.read(), ds.transform
    write_geotiff(folder / name, data, transform=transform, crs="EPSG:32632")
    r = _segment(2, folder, "--mosaic", "--output-dir", out, "-m", checkpoint, tmp=tmp)
    assert r.returncode != 0
    # Said once (by rank 0), as one line; torchrun's own report of the failed ranks follows,
    # but no traceback from geoddu on any rank (an unagreed error would show one).
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "differ in CRS" in errors[0], r.stderr
    assert not re.search(r'File "(?![^"]*site-packages)[^"]*/geoddu/', r.stderr), r.stderr
    assert list(out.iterdir()) == []
    r = _segment(2, folder, "--mosaic", "-o", tmp_path / "map.tif", "-m", checkpoint, tmp=tmp)
    assert r.returncode != 0 and "CRS" in r.stderr, r.stderr
    assert not (tmp_path / "map.tif").exists()
    assert not _leftovers(tmp_path) and not list(tmp.glob("geoddu-*"))
