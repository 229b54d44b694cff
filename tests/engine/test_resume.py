"""`geoddu segment --resume`: a run killed with SIGKILL at any strip, resumed, gives the same
bytes as an uninterrupted --resume run; another job's progress is refused; nothing is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import TRANSFORM, make_checkpoint, write_geotiff
from shapely.geometry import box

import geoddu
from geoddu.engine.resume import resume_folder
from geoddu.errors import Cancelled, GeodduError

GEODDU = [sys.executable, "-m", "geoddu.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
WIDTH, HEIGHT = 768, 1024  # 16 x 12 subimages of 64 px: 12 strips of one column
STRIPS = WIDTH // 64


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A scene with nodata across subimage borders, a model with communication (reach 1)."""
    d = tmp_path_factory.mktemp("resume")
    rng = np.random.default_rng(7)
    image = rng.integers(1, 255, (3, HEIGHT, WIDTH), dtype=np.uint8)
    image[:, 100:200, 300:420] = 0
    write_geotiff(d / "scene.tif", image, nodata=0, tiled=True, blockxsize=256, blockysize=256)
    make_checkpoint(d / "model.pt", subimage_size=64)
    make_checkpoint(d / "other.pt", subimage_size=64, seed=1)
    return d


def _request(world: Path, out: Path, **fields) -> Path:
    """The run as --request JSON: strip_cells is a Python-only field."""
    path = out.parent / "request.json"
    data = {"src": str(world / "scene.tif"), "output": str(out),
            "model": str(world / "model.pt"), "strip_cells": 1, "resume": True, **fields}
    path.write_text(json.dumps(data))
    return path


def _cli(request: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, "segment", "--request", str(request), "-q", *extra],
                          env=ENV, capture_output=True, text=True, timeout=300)


def _done(out: Path) -> int:
    try:
        return len(json.loads((resume_folder(out) / "progress.json").read_text())["done"])
    except (OSError, ValueError):
        return 0


def _kill_after(request: Path, out: Path, strips: int) -> int:
    """Start the run, SIGKILL it once `strips` strips are recorded; the strips it had done."""
    proc = subprocess.Popen([*GEODDU, "segment", "--request", str(request), "-q"], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _done(out) < strips and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, err)
    return _done(out)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != "request.json")


def test_killed_runs_resume_to_the_same_bytes(world, tmp_path):
    ref = tmp_path / "ref" / "map.tif"
    ref.parent.mkdir()
    r = _cli(_request(world, ref))
    assert r.returncode == 0, r.stderr
    assert _files(ref.parent) == ["map.tif", "map.tif.aux.xml"]
    # The classes are those of a plain run.
    plain = tmp_path / "ref" / "plain.tif"
    assert _cli(_request(world, plain, resume=False)).returncode == 0
    with rasterio.open(ref) as a, rasterio.open(plain) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert (a.read(1) == 255).sum() == 100 * 120
    kept = set()
    for k in (1, STRIPS // 2, STRIPS - 3):  # three kill points, at different strips
        out = tmp_path / f"k{k}" / "map.tif"
        out.parent.mkdir()
        request = _request(world, out)
        done = _kill_after(request, out, k)
        assert k <= done < STRIPS, (k, done)
        assert not out.exists()  # partial data never looks like a result
        kept.add(done)
        if k == 1:  # the resumed run killed too, two strips on
            again = _kill_after(request, out, done + 2)
            assert done + 2 <= again < STRIPS and not out.exists(), (done, again)
        r = _cli(request)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == ref.read_bytes(), f"killed after {done} strips"
        assert (out.parent / "map.tif.aux.xml").read_bytes() == (
            ref.parent / "map.tif.aux.xml").read_bytes()
        assert _files(out.parent) == ["map.tif", "map.tif.aux.xml"]  # nothing left behind
    assert len(kept) == 3, kept


def _cancel_after(out: Path, strips: int):
    return lambda: _done(out) >= strips


def _interrupted(world: Path, out: Path, strips: int, **options) -> None:
    with pytest.raises(Cancelled):
        geoddu.segment(world / "scene.tif", out, world / "model.pt", strip_cells=1,
                       resume=True, cancel=_cancel_after(out, strips), **options)
    assert not out.exists() and 0 < _done(out) < STRIPS


def test_several_devices_resume_in_process(world, tmp_path):
    """Python API, two devices each with its block of strips; interrupted (cancel), resumed."""
    ref, out = tmp_path / "ref.tif", tmp_path / "out.tif"
    geoddu.segment(world / "scene.tif", ref, world / "model.pt", strip_cells=1, resume=True,
                   device="cpu,cpu")
    _interrupted(world, out, 3, device="cpu,cpu")
    result = geoddu.segment(world / "scene.tif", out, world / "model.pt", strip_cells=1,
                            resume=True, device="cpu,cpu")
    assert result.devices == ["cpu", "cpu"]
    assert out.read_bytes() == ref.read_bytes()
    assert not resume_folder(out).exists()


def test_another_job_is_refused(world, tmp_path):
    d = tmp_path / "w"
    shutil.copytree(world, d)
    out = tmp_path / "map.tif"
    _interrupted(d, out, 2)
    kept = (resume_folder(out) / "progress.json").read_bytes()

    def refused(says: str, src: Path = d / "scene.tif", model: Path = d / "model.pt",
                **options) -> None:
        with pytest.raises(GeodduError) as exc:
            geoddu.segment(src, out, model, resume=True, **{"strip_cells": 1, **options})
        line = str(exc.value)
        assert says in line and line.endswith(
            f"delete {resume_folder(out)} or run without --resume"), line

    refused("options", bands=(3, 2, 1))
    refused("options", subimage_size=32)
    refused("strip layout", strip_cells=2)
    refused("model", precision="bf16")
    shutil.copy(d / "other.pt", d / "model.pt")  # same path, other weights
    refused("model")
    shutil.copy(world / "model.pt", d / "model.pt")
    with rasterio.open(d / "scene.tif", "r+") as ds:  # same path and size, one pixel changed
        ds.write(np.full((3, 1, 1), 9, np.uint8), window=((0, 1), (0, 1)))
    refused("input scene")
    # Nothing refused touched the progress.
    assert (resume_folder(out) / "progress.json").read_bytes() == kept
    # Through the CLI: one line, exit 1.
    r = _cli(_request(d, out))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("Error: ") and "input scene" in r.stderr
    # A plain run does not read it, and once committed removes it: it is superseded.
    geoddu.segment(d / "scene.tif", out, d / "model.pt", strip_cells=1)
    assert out.exists() and not resume_folder(out).exists()


def test_what_cannot_resume_is_refused(world, tmp_path):
    out = tmp_path / "map.tif"
    cases = [
        ({"probabilities": tmp_path / "p.tif"}, "--resume keeps class maps only"),
        ({"schedule": "two-pass"}, "one-pass strips"),
    ]
    for options, says in cases:
        with pytest.raises(GeodduError, match=says):
            geoddu.segment(world / "scene.tif", out, world / "model.pt", resume=True, **options)
    independent = make_checkpoint(tmp_path / "n.pt", "DDU-Net(2,4,N)", subimage_size=64)
    with pytest.raises(GeodduError, match="independent"):
        geoddu.segment(world / "scene.tif", out, independent, resume=True)
    (tmp_path / "dir").mkdir()
    r = subprocess.run([*GEODDU, "segment", str(world / "scene.tif"), "--output-dir",
                        str(tmp_path / "dir"), "-m", str(world / "model.pt"), "--resume"],
                       env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.strip() == "Error: --resume needs one scene with -o"
    assert sorted(os.listdir(tmp_path)) == ["dir", "n.pt"]


def test_area_of_interest_resumes(world, tmp_path):
    """Outside the area nothing is decoded: the kept strips still read back as nodata there,
    and inside the classes are the full run's."""
    x0, y0 = TRANSFORM * (200, 150)
    x1, y1 = TRANSFORM * (600, 500)
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs="EPSG:32631").to_file(aoi)
    full, out = tmp_path / "full.tif", tmp_path / "out.tif"
    geoddu.segment(world / "scene.tif", full, world / "model.pt", aoi=aoi, strip_cells=1)
    _interrupted(world, out, 2, aoi=aoi)
    geoddu.segment(world / "scene.tif", out, world / "model.pt", aoi=aoi, strip_cells=1,
                   resume=True)
    with rasterio.open(full) as a, rasterio.open(out) as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_killed_mosaic_resumes_to_the_same_bytes(world, tmp_path):
    """--mosaic --resume: the VRT is rebuilt in a new folder by every run, and the run is
    recognised by its inputs; killed at three strips, resumed, the same bytes."""
    sheets = tmp_path / "sheets"
    sheets.mkdir()
    with rasterio.open(world / "scene.tif") as src:
        image, nodata = src.read(), src.nodata
    rows, cols = (0, 400, HEIGHT), (0, 330, WIDTH)  # unequal sheets, off the subimage grid
    for i in range(2):
        for j in range(2):
            r0, r1, c0, c1 = rows[i], rows[i + 1], cols[j], cols[j + 1]
            write_geotiff(sheets / f"s{i}{j}.tif", image[:, r0:r1, c0:c1], nodata=nodata,
                          transform=TRANSFORM * TRANSFORM.translation(c0, r0))

    def request(out: Path) -> Path:
        return _request(world, out, src=[str(sheets)], mosaic=True)

    ref = tmp_path / "ref" / "map.tif"
    ref.parent.mkdir()
    r = _cli(request(ref))
    assert r.returncode == 0, r.stderr
    whole = tmp_path / "ref" / "whole.tif"  # the uncut scene: the mosaic is seamless
    assert _cli(_request(world, whole, resume=False)).returncode == 0
    with rasterio.open(ref) as a, rasterio.open(whole) as b:
        np.testing.assert_array_equal(a.read(), b.read())
    for k in (2, STRIPS // 2, STRIPS - 2):
        out = tmp_path / f"k{k}" / "map.tif"
        out.parent.mkdir()
        done = _kill_after(request(out), out, k)
        assert k <= done < STRIPS and not out.exists(), (k, done)
        r = _cli(request(out))
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == ref.read_bytes(), f"killed after {done} strips"
        assert _files(out.parent) == ["map.tif", "map.tif.aux.xml"]
    # A changed sheet is another scene.
    out = tmp_path / "changed" / "map.tif"
    out.parent.mkdir()
    _kill_after(request(out), out, 2)
    with rasterio.open(sheets / "s11.tif", "r+") as ds:
        ds.write(np.full((3, 1, 1), 9, np.uint8), window=rasterio.windows.Window(0, 0, 1, 1))
    r = _cli(request(out))
    assert r.returncode == 1 and r.stderr.count("Error:") == 1, r.stderr
    assert "input scene differs" in r.stderr, r.stderr
