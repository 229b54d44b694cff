"""`geoddu demo` end to end, and the two checkpoints shipped for it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from geoddu.cli.demo import ASSET_COMM, ASSET_NOCOMM
from geoddu.cli.main import cli

from geoddu.checkpoint import load_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def _asset(name: str) -> Path:
    return Path(str(resources.files("geoddu") / "assets" / name))


def test_shipped_checkpoints_describe_themselves():
    for name, communicate in ((ASSET_COMM, True), (ASSET_NOCOMM, False)):
        path = _asset(name)
        assert path.stat().st_size < 1_000_000
        ckpt = load_checkpoint(path)  # weights_only=True
        assert ckpt["config"]["communicate"] is communicate
        assert ckpt["config"]["depth"] == 3 and ckpt["config"]["comm_features"] == 32
        assert [c["name"] for c in ckpt["classes"]] == ["background", "line", "circle"]
        assert ckpt["subimage_size"] == 32 and ckpt["bands"] == [1]
        assert ckpt["training"]["dataset"]["kind"] == "synthetic"
        assert "resume" not in ckpt  # shipped without optimiser state


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    res = CliRunner().invoke(cli, ["demo", "-o", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())  # rich wraps long lines
    assert "with communication" in text and "not for real land cover" in text
    for name in ("scene.tif", "truth.tif", "classes.tif", "classes-nocomm.tif", "preview.png"):
        assert (out / name).is_file(), name
    with rasterio.open(out / "scene.tif") as scene, rasterio.open(out / "classes.tif") as pred:
        assert scene.crs.to_epsg() == 32631 and pred.crs == scene.crs
        assert pred.transform == scene.transform and pred.shape == scene.shape
        assert pred.nodata == 255 and pred.colormap(1)[1][:3] == (230, 159, 0)
        valid = scene.read_masks(1) > 0
        classes = pred.read(1)
        assert (classes[~valid] == 255).all() and (classes[valid] < 3).all()
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "iou.json").read_text())
    with_comm = report["with communication"]["iou"]
    without = report["without communication"]["iou"]
    # The point of the demo: communication is what draws the line between the circles.
    assert with_comm["line"] > without["line"] + 0.2
    assert with_comm["circle"] > 0.9 and np.isfinite(report["with communication"]["miou"])
