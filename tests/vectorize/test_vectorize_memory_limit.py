"""`vectorize --memory-limit` (issue 26): windows and batches planned to fit, a refusal before
any work naming the smallest workable limit, GDAL's sieve refused when its table cannot fit,
and a guard that stops a run whose regions outgrow the limit, with nothing written."""

from __future__ import annotations

import re
import subprocess
import sys

import geopandas as gpd
import numpy as np
import pytest
from class_maps import blocky, canonical, write_classes

from geoddu.errors import GeodduError
from geoddu.sizes import parse_bytes
from geoddu.vectorize import vectorize
from geoddu.vectorize.memory_plan import (
    MARGIN,
    MIN_WINDOW,
    plan_vectorize,
    region_starts,
)
from geoddu.vectorize.memory_plan import held_now as held_now_bytes

MB = 2**20
CLI = [sys.executable, "-m", "geoddu.cli", "vectorize"]


def _geoddu(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True)


def _named(stderr: str) -> str:
    found = re.search(r"give --memory-limit (\d+M) or more", stderr)
    assert found, stderr
    return found.group(1)


def test_the_plan_halves_the_window_then_the_batch_and_names_a_limit_that_fits():
    common = dict(width=4096, block_rows=512, itemsize=1, held=200 * MB)
    roomy = plan_vectorize("2G", window_size=1024, batch_size=10_000, **common)
    assert (roomy.window_size, roomy.batch_size) == (1024, 10_000)
    tight = plan_vectorize("300M", window_size=1024, batch_size=10_000, **common)
    assert tight.window_size < 1024 and tight.estimate * MARGIN <= 300 * MB
    # 205 MB is below the plan with a 64 px window and a full batch: the batch shrinks.
    smallest = plan_vectorize("230M", window_size=1024, batch_size=10_000, **common)
    assert smallest.window_size == MIN_WINDOW and smallest.batch_size < 10_000
    with pytest.raises(GeodduError, match="give --memory-limit") as refused:
        plan_vectorize("150M", window_size=1024, batch_size=10_000, **common)
    named = _named(str(refused.value))
    assert plan_vectorize(named, window_size=1024, batch_size=10_000, **common)


def test_region_starts_bound_the_regions_from_above():
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 3, (64, 80)).astype(np.uint8)
    cls[:5] = 255
    import rasterio.features

    regions = sum(1 for _ in rasterio.features.shapes(cls, mask=cls != 255, connectivity=4))
    assert regions <= region_starts(cls, 255) <= regions * 1.5
    assert region_starts(np.full((8, 8), 3, np.uint8), 255) == 1


def test_a_limited_run_takes_smaller_windows_and_writes_the_same_layer(tmp_path):
    src = write_classes(tmp_path / "classes.tif", blocky(noise=0.05))
    free = vectorize(src, tmp_path / "free.gpkg", window_size=1024)
    # Room for a 256 px window and a batch (34 MB) but not a 512 px one (75 MB).
    limit = int((held_now_bytes() + 50 * MB) * MARGIN)
    tight = vectorize(src, tmp_path / "tight.gpkg", window_size=1024, memory_limit=limit)
    assert tight.window_size == 256 and free.window_size == 1024
    assert tight.memory_limit == limit and tight.memory_estimate * MARGIN <= limit
    assert "fitted to --memory-limit" in tight.summary()
    assert canonical(gpd.read_file(tmp_path / "tight.gpkg")) == canonical(
        gpd.read_file(tmp_path / "free.gpkg"))


def test_a_limit_too_small_is_refused_before_any_work_and_the_named_one_runs(tmp_path):
    src = write_classes(tmp_path / "classes.tif", blocky())
    out = tmp_path / "out"
    out.mkdir()
    r = _geoddu("-q", "--memory-limit", "60M", str(src), "-o", str(out / "v.gpkg"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: --memory-limit 60.0 MB: vectorize needs at least")
    assert list(out.iterdir()) == []
    ok = _geoddu("-q", "--memory-limit", _named(r.stderr), str(src), "-o", str(out / "v.gpkg"))
    assert ok.returncode == 0, ok.stderr
    assert len(gpd.read_file(out / "v.gpkg")) > 0


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """A map of about one region per two pixels: the regions, not the windows, cost memory."""
    folder = tmp_path_factory.mktemp("noisy")
    rng = np.random.default_rng(3)
    return {n: write_classes(folder / f"noisy{n}.tif",
                             rng.integers(0, 5, (n, n)).astype(np.uint8)) for n in (1024, 1536)}


def test_gdal_sieve_is_refused_before_it_runs_when_its_table_cannot_fit(noisy, tmp_path):
    src = noisy[1536]
    args = ["-q", "--window-size", "64", "--min-area", "300", str(src), "-o",
            str(tmp_path / "v.gpkg")]
    plan_only = _named(_geoddu("--memory-limit", "1M", *args).stderr)
    r = _geoddu("--memory-limit", plan_only, *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "GDAL's sieve could hold up to" in lines[0] and "nothing was written" in lines[0]
    assert parse_bytes(_named(r.stderr)) > parse_bytes(plan_only)
    assert list(tmp_path.iterdir()) == []


def test_regions_that_outgrow_the_limit_stop_the_run_with_one_line(noisy, tmp_path):
    src = noisy[1024]
    args = ["-q", "--window-size", "128", "--min-area", "300", "--sieve", "smallest-first",
            str(src), "-o", str(tmp_path / "v.gpkg")]
    plan_only = parse_bytes(_named(_geoddu("--memory-limit", "1M", *args).stderr))
    # The plan fits; geoddu's own sieve keeps ~430 bytes for each of ~400,000 regions.
    r = _geoddu("--memory-limit", f"{plan_only // MB + 8}M", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "this map needs more" in lines[0] and "geoddu's sieve holds" in lines[0]
    assert "--sieve gdal" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_layer_held_for_simplify_that_outgrows_the_limit_stops_after_a_window(noisy, tmp_path):
    src = noisy[1024]
    args = ["-q", "--window-size", "128", "--simplify", "15", str(src), "-o",
            str(tmp_path / "v.gpkg")]
    plan_only = parse_bytes(_named(_geoddu("--memory-limit", "1M", *args).stderr))
    r = _geoddu("--memory-limit", f"{plan_only // MB + 8}M", *args)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "this map needs more" in lines[0] and "after polygonize" in lines[0]
    assert "the layer held whole for --simplify" in lines[0] and "--simplify" in lines[0]
    assert list(tmp_path.iterdir()) == []
