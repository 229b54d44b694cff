"""`--memory-limit` (issue 26): the plan turns its memory knobs until its estimate fits, runs
with the same result, or refuses before any work naming the smallest limit that would do."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
from helpers import make_checkpoint, write_geotiff
from memory_cgroup import hard_limit_available, run_limited

import geoddu
from geoddu.engine.memory_limit import MARGIN
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError
from geoddu.sizes import parse_bytes


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


def test_under_a_limit_the_strips_hand_freed_memory_back_after_every_row(tmp_path, wide):
    """Trimmed once per strip, glibc's holes let the peak creep up as the run goes on (880 MB
    planned, 1075 MiB measured on 32768^2); under a limit every row is trimmed. The plan says
    so, and the classes are those of a free run."""
    free = plan_job(_request(tmp_path, wide, "free.tif"))
    held = plan_job(_request(tmp_path, wide, "held.tif", memory_limit="4G"))
    assert (held.schedule.kind, held.schedule.width) == (free.schedule.kind, free.schedule.width)
    assert not free.trims_each_row and held.trims_each_row
    assert free.to_dict()["schedule"]["heap_trimmed"] == "each strip"
    assert held.to_dict()["schedule"]["heap_trimmed"] == "each row"
    assert "after each row (--memory-limit)" in held.describe()
    assert "after each row" not in free.describe()
    two = plan_job(_request(tmp_path, wide, "two.tif", memory_limit="4G", schedule="two-pass"))
    assert not two.trims_each_row and two.to_dict()["schedule"]["heap_trimmed"] == "each pass"
    geoddu.segment(wide[0], tmp_path / "free.tif", wide[1])
    geoddu.segment(wide[0], tmp_path / "held.tif", wide[1], memory_limit="4G")
    with rasterio.open(tmp_path / "free.tif") as a, rasterio.open(tmp_path / "held.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


def test_the_estimate_counts_the_context_columns_strips_hand_on(tmp_path):
    """A strip keeps the bottleneck maps of its left context column and of the column it hands
    to the next strip, for every row: the planned maps grow with the scene's height."""
    rng = np.random.default_rng(1)
    model = make_checkpoint(tmp_path / "m.pt", subimage_size=32)

    def maps(rows: int) -> int:
        scene = write_geotiff(tmp_path / f"s{rows}.tif",
                              rng.integers(0, 255, (3, 32 * rows, 512), np.uint8))
        plan = plan_job(SegmentRequest(src=scene, output=tmp_path / "o.tif", model=model))
        assert plan.schedule.kind == "one-pass" and plan.schedule.width < 16
        return next(p.bytes for p in plan.memory.parts if p.name == "bottleneck maps in RAM")

    spec = plan_job(SegmentRequest(src=write_geotiff(
        tmp_path / "one.tif", rng.integers(0, 255, (3, 32, 32), np.uint8)),
        output=tmp_path / "o.tif", model=model)).spec
    cell = 32 // spec.stride
    record = spec.comm_features * cell * cell * 4
    assert maps(12) - maps(4) == 2 * 1 * 8 * record


def _named_limit(stderr: str) -> str:
    return stderr.strip().splitlines()[-1].rsplit("give --memory-limit ", 1)[1].split()[0]


@pytest.mark.skipif(not (hard_limit_available() or "").startswith("cgroup"),
                    reason="no memory cgroup can be made here")
def test_the_smallest_named_limit_holds_under_a_hard_memory_cgroup(tmp_path, wide):
    """The limit `segment` names is enough for the real process: held to it by the kernel (a
    memory cgroup, where going over kills), the run ends 0 with the classes of a free run."""
    scene, model = wide
    out = tmp_path / "out"
    out.mkdir()
    base = [sys.executable, "-m", "geoddu.cli", "segment", "-q", "-m", str(model)]
    refused = subprocess.run([*base, "-o", str(out / "x.tif"), "--memory-limit", "100M",
                              str(scene)], capture_output=True, text=True)
    named = _named_limit(refused.stderr)
    held = run_limited([*base, "-o", str(out / "held.tif"), "--memory-limit", named,
                        str(scene)], parse_bytes(named), timeout=300)
    print(f"--memory-limit {named} under {held.how}: exit {held.returncode}, peak RSS "
          f"{held.peak_rss_mb:.0f} MiB, charged {held.peak_charged_mb:.0f} MiB")
    assert held.returncode == 0, held.stderr
    # The kernel charges the cgroup only pages first touched inside it (the libraries' pages
    # are already cached), so the process's own peak is the stricter figure.
    assert max(held.peak_charged_mb, held.peak_rss_mb) <= parse_bytes(named) / 2**20
    geoddu.segment(scene, out / "free.tif", model)
    with rasterio.open(out / "free.tif") as a, rasterio.open(out / "held.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.skipif(not (hard_limit_available() or "").startswith("cgroup"),
                    reason="no memory cgroup can be made here")
def test_vectorize_at_its_named_limit_holds_under_a_hard_memory_cgroup(tmp_path):
    rng = np.random.default_rng(5)
    classes = write_geotiff(tmp_path / "classes.tif",
                            rng.integers(0, 4, (1, 256, 256), np.uint8), tiled=True,
                            blockxsize=64, blockysize=64)
    out = tmp_path / "out"
    out.mkdir()
    base = [sys.executable, "-m", "geoddu.cli", "vectorize", "-q", "--min-area", "3",
            str(classes)]
    refused = subprocess.run([*base, "-o", str(out / "x.gpkg"), "--memory-limit", "1M"],
                             capture_output=True, text=True)
    named = _named_limit(refused.stderr)
    held = run_limited([*base, "-o", str(out / "held.gpkg"), "--memory-limit", named],
                       parse_bytes(named), timeout=300)
    print(f"vectorize --memory-limit {named} under {held.how}: exit {held.returncode}, "
          f"peak RSS {held.peak_rss_mb:.0f} MiB, charged {held.peak_charged_mb:.0f} MiB")
    assert held.returncode == 0, held.stderr
    assert max(held.peak_charged_mb, held.peak_rss_mb) <= parse_bytes(named) / 2**20
    assert (out / "held.gpkg").exists()
