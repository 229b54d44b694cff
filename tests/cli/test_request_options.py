"""The command line as a request: each option that sets a request field is named after it, so
`geoddu segment` and `geoddu train` map onto SegmentRequest and TrainRequest by name, and
`--request FILE|-` with options over it gives the same run."""

from __future__ import annotations

import json
import subprocess
import sys

import click
import numpy as np
import pytest
import rasterio
from geoddu.cli.main import cli

from geoddu.engine.request import SegmentRequest
from geoddu.train.request import TrainRequest

GEODDU = [sys.executable, "-m", "geoddu.cli"]
# Fields only the Python API sets (speed and memory tuning, never the result); SRC is segment's
# argument, not an option.
PYTHON_ONLY = {"src", "store_max_ram_bytes", "comm_tile_cells", "strip_cells",
               "skip_budget_bytes", "mosaic_of"}  # mosaic_of: set by --mosaic itself


@pytest.mark.parametrize(("command", "request_type"),
                         [("segment", SegmentRequest), ("train", TrainRequest)])
def test_every_request_field_is_one_option_of_that_name(command, request_type):
    options = {p.name: p for p in cli.commands[command].params if isinstance(p, click.Option)}
    fields = set(request_type.field_names()) - PYTHON_ONLY
    assert fields <= set(options), sorted(fields - set(options))
    for name in fields:
        # Named on the command line as the request's errors name it.
        assert request_type.flag(name) in options[name].opts, (name, options[name].opts)


def _segment(*args: object, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, "segment", *map(str, args)], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_segment_progress_json_and_request_overrides(tmp_path, scene, checkpoint):
    """--progress json is --progress-format json; options override the request's fields."""
    first = _segment(scene, "-o", tmp_path / "a.tif", "-m", checkpoint, "--progress", "json")
    assert first.returncode == 0, first.stderr
    events = [json.loads(line) for line in first.stderr.splitlines()]
    assert {e["event"] for e in events} == {"progress", "done"}
    assert events[-1]["output"] == str(tmp_path / "a.tif")
    assert {e["stage"] for e in events[:-1]} == {"encode", "communicate", "decode"}
    request = SegmentRequest(src=str(scene), output=str(tmp_path / "ignored.tif"),
                             model=str(checkpoint), precision="fp32")
    r = _segment("--request", "-", "-o", tmp_path / "b.tif", "--confidence",
                 tmp_path / "c.tif", "-q", stdin=request.to_json())
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "ignored.tif").exists() and (tmp_path / "c.tif").exists()
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
    r = _segment(scene, "--request", "-", stdin=request.to_json())
    assert r.returncode == 1 and r.stderr.splitlines() == [
        "Error: --request names the raster: give no SRC with it"]
