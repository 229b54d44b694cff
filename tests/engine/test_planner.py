"""The whole plan of a job before it runs (`plan_job`): made from the checkpoint's figures and
the scene's header alone, and exactly what the run then does."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import CRS, TRANSFORM, make_checkpoint, write_geotiff

import geoddu
from geoddu.analysis import decoder_levels, encoder_maps, skip_values
from geoddu.engine import runner
from geoddu.engine.job import open_job
from geoddu.engine.memory import estimate_memory
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.engine.steps import EncodeCell
from geoddu.models import create_model
from geoddu.predictor import ModelSpec


@pytest.mark.parametrize(
    ("name", "options"),
    [("DDU-Net(3,16,Y)", {"base_channels": 8}), ("U-Net(2)", {"base_channels": 4}),
     ("resnet18", {}), ("resnet50", {})],
)
def test_skip_figures_are_a_real_encoders(name, options):
    """What a one-pass strip keeps per cell, from the configuration alone, equals the shapes a
    real encoder forward returns; the decoder's figures are its modules' widths."""
    model = create_model(name, **options).eval()
    with torch.no_grad():
        skips, bottleneck = model.encode(torch.zeros(1, 3, 64, 64))
    real = [tuple(t.shape[1:]) for t in [*skips, bottleneck]]
    assert encoder_maps(model.config, 64) == real
    numel = sum(t.numel() for t in [*skips, bottleneck])
    assert skip_values(model.config, 64) == numel
    spec = ModelSpec.of({"bands": [1, 2, 3], "subimage_size": 64}, model)
    assert spec.skip_bytes(64, "fp32") == 4 * numel and spec.skip_bytes(64, "bf16") == 2 * numel
    ups = [*model.decoder.ups, *([model.decoder.final] if model.decoder.final else [])]
    sizes: list[int] = []
    for u in ups:
        u.register_forward_hook(lambda mod, args, out: sizes.append(out.shape[-1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, 64, 64))
    assert decoder_levels(model.config) == [
        (u.up.out_channels, u.conv[0].in_channels - u.up.out_channels, u.conv[0].out_channels,
         64 // size)
        for u, size in zip(ups, sizes, strict=True)
    ]


def _no_pixels_no_model(monkeypatch):
    """Planning must read no pixel and build no model."""
    def refuse(*args, **kwargs):
        raise AssertionError("planning read pixels or loaded the model")

    from geoddu.io.raster import RasterSource

    for name in ("read", "read_mask", "read_with_mask"):
        monkeypatch.setattr(RasterSource, name, refuse)
    monkeypatch.setattr("geoddu.predictor.load_model", refuse)
    monkeypatch.setattr("geoddu.engine.job.load_model", refuse)
    monkeypatch.setattr("geoddu.checkpoint.model_from_checkpoint", refuse)


def test_plan_reads_no_pixels_and_equals_the_runs_plan(tmp_path, scene, checkpoint, monkeypatch):
    request = SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint)
    with monkeypatch.context() as m:
        _no_pixels_no_model(m)
        plan = plan_job(request)
    assert (plan.schedule.label, plan.encoder_runs) == ("one pass", 35)
    assert plan.totals == {"encode": 35, "communicate": 5, "decode": 35}
    # The plan a run makes from the loaded model is the same, figure for figure.
    job = open_job(request, devices=["cpu"])
    try:
        assert job.plan.to_dict() == plan.to_dict()
    finally:
        job.close()
    assert not (tmp_path / "o.tif").exists()


def _record_reads(monkeypatch) -> list[list[tuple[int, int]]]:
    reads: list[list[tuple[int, int]]] = []
    prefetch = runner._prefetch

    def recording(source, cells, stop, *args):
        reads.append([c.index for c in cells])
        return prefetch(source, cells, stop, *args)

    monkeypatch.setattr(runner, "_prefetch", recording)
    return reads


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"strip_cells": 2, "device": "cpu,cpu,cpu"},
        {"schedule": "two-pass", "device": "cpu,cpu", "comm_tile_cells": 16},
        {"independent": True},
    ],
)
def test_the_run_does_what_the_plan_says(tmp_path, scene, checkpoint, monkeypatch, options):
    options = dict(options)
    if options.pop("independent", False):
        checkpoint = make_checkpoint(tmp_path / "n.pt", "DDU-Net(2,4,N)")
    request = SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint, **options)
    plan = plan_job(request)
    reads = _record_reads(monkeypatch)
    last: dict[str, tuple[int, int]] = {}
    result = geoddu.segment(
        scene, tmp_path / "o.tif", checkpoint,
        progress=lambda stage, done, total: last.__setitem__(stage, (done, total)), **options,
    )
    # No nodata in this scene: every planned encode runs.
    assert result.encoder_runs == plan.encoder_runs
    assert result.schedule == plan.schedule.label
    assert last == {stage: (n, n) for stage, n in plan.totals.items()}
    # Each device's prefetcher read exactly its planned windows, in order (two passes: once
    # per pass).
    if plan.cells.communicates and plan.schedule.kind == "one-pass":
        planned = [w.reads for w in plan.work]
    else:
        planned = [w.cells(stage) for stage in ("encode", "decode") for w in plan.work
                   if plan.cells.communicates or stage == "decode"]
    assert sorted(reads) == sorted([c.index for c in cells] for cells in planned)


def test_an_area_of_interest_is_planned_as_it_runs(tmp_path, checkpoint):
    rng = np.random.default_rng(3)
    big = write_geotiff(tmp_path / "big.tif", rng.integers(1, 255, (3, 256, 320), np.uint8))
    import geopandas as gpd
    from shapely.geometry import box

    x0, y0 = TRANSFORM * (130, 100)
    x1, y1 = TRANSFORM * (170, 150)
    gpd.GeoDataFrame(geometry=[box(x0, y1, x1, y0)], crs=CRS).to_file(tmp_path / "a.gpkg")
    request = SegmentRequest(src=big, output=tmp_path / "o.tif", model=checkpoint,
                             aoi=tmp_path / "a.gpkg")
    plan = plan_job(request)
    # Rows 3-4 and columns 4-5 touched; a ring of one cell encoded around them.
    assert sorted(c.index for c in plan.cells.decode) == [(3, 4), (3, 5), (4, 4), (4, 5)]
    assert len(plan.cells.encode) == 4 * 4
    result = geoddu.segment(big, tmp_path / "o.tif", checkpoint, aoi=tmp_path / "a.gpkg")
    assert (result.subimages, result.encoder_runs) == (4, plan.encoder_runs)


def test_a_ranks_plan(tmp_path, scene, checkpoint):
    request = SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint)
    plans = [plan_job(request, world=3, rank=r) for r in range(3)]
    assert all(p.schedule.label == "two passes" and p.encoder_runs == 70 for p in plans)
    # Rank 0 reports its own encodes and tiles, and every rank's decoded windows.
    assert [p.totals["encode"] for p in plans] == [12, 12, 11]
    assert [p.totals["decode"] for p in plans] == [35] * 3
    assert plans[0].for_rank(2).to_dict() == plans[2].to_dict()
    shares = plans[0].to_dict()["ranks"]["shares"]
    assert [s["decode_cells"] for s in shares] == [12, 12, 11]


def test_the_memory_estimate_adds_up():
    mb = 2**20
    est = estimate_memory(
        devices=["cpu", "cuda:0"], live_cells=6, cell_bytes=10 * mb, forward_bytes=20 * mb,
        weight_bytes=1 * mb, window_bytes=mb, output_bytes=mb, maps_bytes=3 * mb,
        tile_bytes=4 * mb, scratch_bytes=7 * mb, cache_bytes=5 * mb, runtime_bytes=100 * mb,
    )
    parts = {(p.name, p.where): p.bytes for p in est.parts}
    assert parts[("live skips", "host")] == parts[("live skips", "cuda:0")] == 60 * mb
    assert parts[("activations of one subimage", "cuda:0")] == 20 * mb
    assert parts[("model weights", "cuda:0")] == 1 * mb
    assert parts[("communication tile", "host")] == 4 * mb  # on the first device
    assert parts[("read-ahead windows", "host")] == 2 * 4 * mb  # two devices, 2 ahead + 2
    assert est.places == ["host", "cuda:0"]
    assert est.peak("host") == sum(b for (_, w), b in parts.items() if w == "host")
    assert est.peak("cuda:0") == (60 + 20 + 1) * mb and est.scratch_bytes == 7 * mb


def test_two_passes_plan_the_scratch_disk(tmp_path, scene, checkpoint):
    request = SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint,
                             schedule="two-pass", store_max_ram_bytes=0)
    plan = plan_job(request)
    # Two stores of F=4 maps of 8 x 8 bottleneck px per cell, 35 cells, float32, on disk.
    assert plan.memory.scratch_bytes == 2 * 35 * 4 * 8 * 8 * 4
    assert "bottleneck maps in RAM" not in {p.name for p in plan.memory.parts if p.bytes}


_MEASURE = """
import json, sys
import geoddu
from geoddu.engine.execute import execute
from geoddu.engine.memory import RUNTIME_BYTES
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.resources import current_rss_mb, peak_rss_mb
runtime = current_rss_mb()
request = SegmentRequest(src=sys.argv[1], output=sys.argv[2], model=sys.argv[3])
plan = plan_job(request)
execute(request)
print(json.dumps({"estimate": (plan.memory.peak() - RUNTIME_BYTES) / 2**20,
                  "measured": peak_rss_mb() - runtime}))
"""


def test_the_peak_estimate_is_near_the_measured_peak(tmp_path):
    """A run whose skips and activations outweigh the fixed costs, in its own process: what
    the job adds to the runtime's memory is within 25% of the plan's figure (0.93 measured)."""
    torch.manual_seed(0)
    from geoddu.checkpoint import save_checkpoint
    from geoddu.checkpoint_metadata import build_metadata

    model = create_model("DDU-Net(3,16,Y)", base_channels=8, num_classes=4)
    save_checkpoint(tmp_path / "m.pt", model, build_metadata(model.config, subimage_size=256))
    data = np.random.default_rng(0).integers(1, 255, (3, 1024, 1024), np.uint8)
    scene = write_geotiff(tmp_path / "s.tif", data, tiled=True, blockxsize=256, blockysize=256)
    r = subprocess.run([sys.executable, "-c", _MEASURE, str(scene), str(tmp_path / "o.tif"),
                        str(tmp_path / "m.pt")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.75 <= got["estimate"] / got["measured"] <= 1.25, got


def test_the_plan_counts_what_nodata_skips(tmp_path, checkpoint):
    """An all-nodata subimage is planned (its window must be read) but not encoded: the run's
    encoder runs are the plan's less the encode steps of such cells."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (3, 150, 205), dtype=np.uint8)
    image[:, 32:64, 64:96] = 0
    scene = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    request = SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint,
                             strip_cells=3)
    plan = plan_job(request)
    blank = sum(isinstance(s, EncodeCell) and s.cell.index == (1, 2)
                for w in plan.work for r in w.strips for s in r.steps)
    result = geoddu.segment(scene, tmp_path / "o.tif", checkpoint, strip_cells=3)
    assert blank == 1 and result.encoder_runs == plan.encoder_runs - blank
