"""`--memory-limit` (issue 26): the plan turns its memory knobs until its estimate fits, runs
with the same result, or refuses before any work naming the smallest limit that would do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from helpers import make_checkpoint, write_geotiff

import geoddu
from geoddu.engine.memory import parse_bytes
from geoddu.engine.memory_limit import MARGIN
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError


@pytest.fixture
def wide(tmp_path):
    """A scene 16 subimages wide: the default one-pass strips are 8 columns."""
    rng = np.random.default_rng(0)
    scene = write_geotiff(tmp_path / "wide.tif", rng.integers(0, 255, (3, 64, 512), np.uint8),
                          tiled=True, blockxsize=64, blockysize=64)
    model = make_checkpoint(tmp_path / "m.pt", subimage_size=32)
    return scene, model


def _request(tmp_path, wide, name: str, **kw) -> SegmentRequest:
    scene, model = wide
    return SegmentRequest(src=scene, output=tmp_path / name, model=model, **kw)


def test_sizes_read_as_people_write_them():
    assert parse_bytes("1G") == 2**30 and parse_bytes("800M") == 800 * 2**20
    assert parse_bytes("1.5GiB") == 3 * 2**29 and parse_bytes("2048MB") == 2**31
    assert parse_bytes(12345) == 12345
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(GeodduError, match="memory-limit"):
            parse_bytes(bad)


def test_a_tight_limit_narrows_the_plan_and_keeps_the_result(tmp_path, wide):
    free = plan_job(_request(tmp_path, wide, "free.tif"))
    assert free.schedule.kind == "one-pass" and free.schedule.width == 8
    # Just below what the default plan needs: the plan must give something up.
    limit = int(free.memory.peak("host") * MARGIN) - 1
    tight = plan_job(_request(tmp_path, wide, "tight.tif", memory_limit=limit))
    assert tight.memory.peak("host") * MARGIN <= limit
    assert (tight.schedule.kind, tight.schedule.width) != ("one-pass", 8)
    geoddu.segment(wide[0], tmp_path / "free.tif", wide[1])
    geoddu.segment(wide[0], tmp_path / "tight.tif", wide[1], memory_limit=limit)
    with rasterio.open(tmp_path / "free.tif") as a, rasterio.open(tmp_path / "tight.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_limit_too_small_is_refused_before_any_work(tmp_path, wide):
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "geoddu.cli", "segment", "-q", "-o",
                        str(out / "m.tif"), "-m", str(wide[1]), "--memory-limit", "100M",
                        str(wide[0])], capture_output=True, text=True)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --memory-limit 100.0 MB"), r.stderr
    assert "give --memory-limit" in lines[0]
    assert list(out.iterdir()) == []
    # The limit it names is enough.
    named = lines[0].rsplit("give --memory-limit ", 1)[1].split()[0]
    plan = plan_job(_request(tmp_path, wide, "named.tif", memory_limit=named))
    assert plan.memory.peak("host") * MARGIN <= parse_bytes(named)
