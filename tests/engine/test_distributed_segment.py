"""`geoddu segment` under a real `torchrun` (gloo on the CPU): the same classes as one process,
scenes spread over ranks, and a killed rank ends the job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from helpers import TORCHRUN, rank_env, rank_pid, write_geotiff

import geoddu
from geoddu.engine.batch import assign_scenes
from geoddu.io.writer import TEMP_MARKER
from geoddu.parallel.halo import halo_plan, owner_grid
from geoddu.partition import Partition

TIMEOUT = 180  # a hang fails the test instead of the CI job


def torchrun(n: int, *args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, "--nproc-per-node", str(n), "-m", "geoddu.cli", "segment", *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, env=rank_env(), cwd=cwd
    )


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def _events(stderr: str) -> list[dict]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def _no_temps(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if TEMP_MARKER in p.name]


def test_halo_plan_sends_exactly_what_the_neighbours_read():
    """Pure geometry: each rank's receives are the other ranks' sends, and the strips cover
    exactly the pixels within the halo of the receiver's cells."""
    part = Partition((16,) * 10, (16,) * 13)
    cell, halo = 4, 6  # the halo reaches two cells: non-rectangular blocks, several peers
    owner = owner_grid(part, 3)
    plans = [halo_plan(owner, r, cell, halo) for r in range(3)]
    for r, plan in enumerate(plans):
        for peer, items in plan.recvs.items():
            sent = plans[peer].sends[r]
            assert [p for p, _ in items] == [p for p, _ in sent]
            assert all((a == b).all() for (_, a), (_, b) in zip(items, sent, strict=True))
        # Dilate the rank's own pixels by the halo: the received strips are exactly the
        # foreign pixels inside.
        mine = np.kron(owner == r, np.ones((cell, cell), bool))
        near = np.zeros_like(mine)
        ys, xs = np.nonzero(mine)
        for y, x in zip(ys, xs, strict=True):
            near[max(0, y - halo) : y + halo + 1, max(0, x - halo) : x + halo + 1] = True
        got = np.zeros_like(mine)
        for items in plan.recvs.values():
            for (i, j), m in items:
                got[i * cell : (i + 1) * cell, j * cell : (j + 1) * cell] |= m
        np.testing.assert_array_equal(got, near & ~mine)


def test_scene_assignment():
    # One scene far larger than the rest is split spatially; the rest balanced by pixels.
    spatial, ranks = assign_scenes([100, 10, 9, 8, 1000], 2)
    assert spatial == [4] and ranks == [[0], [1, 2, 3]]
    assert assign_scenes([5, 5, 5], 1) == ([], [[0, 1, 2]])


@pytest.mark.parametrize(("ranks", "subimage"), [(2, 32), (3, 16)])
def test_torchrun_writes_the_single_process_classes(tmp_path, checkpoint, ranks, subimage):
    """35 (or 130) subimages over 2 (or 3) ranks: uneven blocks, and with 16 px subimages the
    halo (6 bottleneck px) reaches two cells (4 px each) into the neighbours. Nodata blocks
    make some subimages skipped (zeros in the mosaic) on several ranks."""
    rng = np.random.default_rng(3)
    data = rng.integers(1, 255, (3, 150, 205), dtype=np.uint8)
    data[:, :40, 60:140] = 0
    data[:, 100:, 180:] = 0
    scene = write_geotiff(
        tmp_path / "scene.tif", data, nodata=0, tiled=True, blockxsize=64, blockysize=64
    )
    ref = geoddu.segment(
        scene,
        tmp_path / "ref.tif",
        checkpoint,
        subimage_size=subimage,
        probabilities=tmp_path / "ref_p.tif",
    )
    out = tmp_path / "out.tif"
    t = time.perf_counter()
    r = torchrun(
        ranks,
        scene,
        "-o",
        out,
        "-m",
        checkpoint,
        "--subimage-size",
        subimage,
        "--probabilities",
        tmp_path / "p.tif",
        "--timeout",
        60,
    )
    assert r.returncode == 0, r.stderr
    print(f"torchrun with {ranks} ranks: {time.perf_counter() - t:.1f} s")
    np.testing.assert_array_equal(_read(out), _read(tmp_path / "ref.tif"))
    np.testing.assert_allclose(_read(tmp_path / "p.tif"), _read(tmp_path / "ref_p.tif"), atol=1e-5)
    # One summary line, from rank 0, reporting every rank.
    summary = [line for line in r.stdout.splitlines() if "subimages" in line]
    assert len(summary) == 1 and f"on {ranks} ranks (cpu x{ranks})" in summary[0], r.stdout
    assert f"({ref.skipped} all-nodata skipped)" in summary[0] and ref.skipped > 0
    _no_temps(tmp_path)


def test_torchrun_batch_writes_every_scene_once(tmp_path, checkpoint):
    """Three scenes on two ranks: the large one is split spatially over both, the two small
    ones go one to each rank. A rerun with --skip-existing redoes only the missing one."""
    rng = np.random.default_rng(4)
    folder = tmp_path / "scenes"
    folder.mkdir()
    sizes = {"large": (150, 205), "small_a": (40, 50), "small_b": (60, 33)}
    for name, (h, w) in sizes.items():
        write_geotiff(folder / f"{name}.tif", rng.integers(0, 255, (3, h, w), dtype=np.uint8))
    refs = {}
    for name in sizes:
        geoddu.segment(folder / f"{name}.tif", tmp_path / f"ref_{name}.tif", checkpoint)
        refs[name] = _read(tmp_path / f"ref_{name}.tif")
    out = tmp_path / "out"
    out.mkdir()
    r = torchrun(2, folder, "--output-dir", out, "-m", checkpoint, "--progress-format", "json")
    assert r.returncode == 0, r.stderr
    done = [e for e in _events(r.stderr) if e["event"] == "done"]
    assert len(done) == 1  # rank 0 alone reports
    ranks = {Path(s["output"]).stem: s["ranks"] for s in done[0]["scenes"]}
    assert ranks["large"] == [0, 1] and sorted(ranks["small_a"] + ranks["small_b"]) == [0, 1]
    assert all(s["status"] == "written" for s in done[0]["scenes"])
    # Each class map comes with its GDAL sidecar (category names, attribute table).
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.tif{s}" for n in sizes for s in ("", ".aux.xml"))
    for name in sizes:
        np.testing.assert_array_equal(_read(out / f"{name}.tif"), refs[name])

    # A killed batch: one output missing. Without --skip-existing nothing is redone.
    for name in ("small_b.tif", "small_b.tif.aux.xml"):  # an output is the map and its sidecar
        (out / name).unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = torchrun(2, folder, "--output-dir", out, "-m", checkpoint, "-q")
    assert r.returncode == 1 and "--skip-existing" in r.stderr
    assert r.stderr.count("Error: 2 output(s) exist") == 1  # printed by rank 0 only
    listing = tmp_path / "scenes.txt"
    listing.write_text("".join(f"{folder / n}.tif\n" for n in sizes))
    r = torchrun(
        2,
        listing,
        "--output-dir",
        out,
        "-m",
        checkpoint,
        "--skip-existing",
        "--progress-format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    status = {Path(s["output"]).stem: s["status"] for s in _events(r.stderr)[-1]["scenes"]}
    assert status == {"large": "skipped", "small_a": "skipped", "small_b": "written"}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name in before} == before
    np.testing.assert_array_equal(_read(out / "small_b.tif"), refs["small_b"])
    _no_temps(out)


def test_killing_a_rank_ends_the_job(tmp_path, checkpoint):
    rng = np.random.default_rng(5)
    scene = write_geotiff(
        tmp_path / "large.tif",
        rng.integers(0, 255, (3, 768, 768), np.uint8),
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )
    out = tmp_path / "out.tif"
    cmd = [
        *TORCHRUN,
        "--nproc-per-node",
        "2",
        "-m",
        "geoddu.cli",
        "segment",
        str(scene),
        "-o",
        str(out),
        "-m",
        str(checkpoint),
        "--progress-format",
        "json",
        "--timeout",
        "60",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=rank_env()
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if '"event": "progress"' in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(TIMEOUT), "".join(lines)
        victim = rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        rc = proc.wait(timeout=90)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(5)
    text = "".join(lines)
    print(f"job ended {took:.1f} s after the kill, exit {rc}")
    assert rc != 0 and took < 60
    assert "Signal 9 (SIGKILL)" in text or "failed" in text.lower(), text
    assert '"event": "done"' not in text
    assert not out.exists()
    _no_temps(tmp_path)


def test_batch_in_one_process_and_its_errors(tmp_path, scene, checkpoint):
    """Without torchrun a batch runs scene after scene; bad batch arguments are one-line errors."""
    geoddu_cli = [sys.executable, "-m", "geoddu.cli", "segment"]

    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*geoddu_cli, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT
        )

    other = tmp_path / "sub"
    other.mkdir()
    write_geotiff(other / "b.tif", np.full((3, 40, 40), 7, np.uint8))
    out = tmp_path / "out"
    out.mkdir()
    r = run(scene, other, "--output-dir", out, "-m", checkpoint)
    assert r.returncode == 0, r.stderr
    assert "2 scene(s): 2 written" in r.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "b.tif", "b.tif.aux.xml", "scene.tif", "scene.tif.aux.xml"]
    geoddu.segment(scene, tmp_path / "ref.tif", checkpoint)
    np.testing.assert_array_equal(_read(out / "scene.tif"), _read(tmp_path / "ref.tif"))
    # The argument errors, in-process (each a one-line error and exit status 1).
    from click.testing import CliRunner
    from geoddu.cli.main import cli

    (tmp_path / "empty.txt").write_text("# nothing\n")
    for args, needle in [
        ((scene, other, "-o", tmp_path / "x.tif"), "--output-dir"),
        ((scene, scene, "--output-dir", out, "--overwrite"), "would both be written"),
        ((tmp_path / "empty.txt", "--output-dir", out), "no input rasters"),
        ((scene, "--output-dir", out, "-o", tmp_path / "x.tif"), "either"),
        ((scene, "--output-dir", out, "--probabilities", tmp_path / "p.tif"), "one scene"),
        ((scene, "--output-dir", out), "--skip-existing"),
    ]:
        r = CliRunner().invoke(cli, ["segment", *map(str, args), "-m", str(checkpoint)])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 1 and len(lines) == 1 and needle in lines[0], (args, r.stderr)


def test_batch_refuses_a_scene_with_more_bands_than_the_model(tmp_path, scene, checkpoint):
    """The single-process batch route opens scenes like `geoddu.segment`: no silent band cut."""
    from geoddu.engine.batch import segment_batch

    extra = write_geotiff(tmp_path / "rgbn.tif", np.full((4, 40, 40), 7, np.uint16))
    out = tmp_path / "out"
    out.mkdir()
    jobs = [(str(scene), out / "a.tif"), (str(extra), out / "b.tif")]
    result = segment_batch(jobs, {"model": checkpoint})
    a, b = result.scenes
    assert a.status == "written" and b.status == "failed"
    assert "has 4 bands but the model takes 3" in b.summary and "--bands" in b.summary
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "a.tif.aux.xml"]


def test_torchrun_with_aoi_vector_and_every_output_equals_one_process(tmp_path, checkpoint):
    """Every option of `geoddu segment` under torchrun: an area of interest (only the planned
    cells are encoded and decoded, spread over the ranks), polygons, probabilities, confidence
    and a COG: the same pixels and the same polygons as one process."""
    import geopandas as gpd
    import shapely
    from helpers import CRS

    rng = np.random.default_rng(5)
    scene = write_geotiff(
        tmp_path / "scene.tif", rng.integers(1, 255, (3, 150, 205), dtype=np.uint8)
    )
    aoi = tmp_path / "aoi.gpkg"
    gpd.GeoDataFrame(
        {"id": [1, 2]},
        geometry=[shapely.box(500300, 3998900, 501200, 3999700),
                  shapely.box(501500, 3998600, 501900, 3998800)],
        crs=CRS,
    ).to_file(aoi)
    outputs = {}
    for name, runner in (("one", None), ("ranks", 2)):
        d = tmp_path / name
        d.mkdir()
        args = [scene, "-o", d / "map.tif", "-m", checkpoint, "--subimage-size", 32,
                "--aoi", aoi, "--aoi-where", "id >= 1", "--vector", d / "v.gpkg",
                "--probabilities", d / "p.tif", "--confidence", d / "c.tif", "--cog"]
        if runner is None:
            r = subprocess.run([sys.executable, "-m", "geoddu.cli", "segment", "-q",
                                *map(str, args)], capture_output=True, text=True,
                               env=rank_env(), timeout=TIMEOUT)
        else:
            r = torchrun(runner, *args, "-q", "--timeout", 60)
        assert r.returncode == 0, r.stderr
        outputs[name] = d
        _no_temps(d)
    one, ranks = outputs["one"], outputs["ranks"]
    for f in ("map.tif", "p.tif", "c.tif"):
        np.testing.assert_array_equal(_read(ranks / f), _read(one / f))
    classes = _read(one / "map.tif")[0]
    assert (classes == 255).any() and (classes != 255).any()  # the area limits the map
    a, b = gpd.read_file(one / "v.gpkg"), gpd.read_file(ranks / "v.gpkg")
    assert len(a) == len(b) > 0
    assert list(a["class_id"]) == list(b["class_id"])
    assert all(x.equals(y) for x, y in zip(a.geometry, b.geometry, strict=True))
