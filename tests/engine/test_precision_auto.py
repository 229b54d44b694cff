"""`--precision auto`: the engine runs what the cached probe chose for the device, says so,
and stays exact within that precision."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner
from geoddu.cli.main import cli

import geoddu
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.precision_probe import CACHE_ENV, candidates, probe_precision


def _seed_cache(monkeypatch, tmp_path, **seconds):
    """The probe's cache as this machine would hold it after measuring `seconds`."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    probe = probe_precision("cpu", refresh=True,
                            timer=lambda device, precisions: {p: seconds[p] for p in precisions})
    return probe.choice


@pytest.mark.skipif("bf16" not in candidates(torch.device("cpu"))[0],
                    reason="this CPU has no bf16 instructions: auto never measures bf16")
@pytest.mark.parametrize(("bf16_seconds", "expected"), [(0.004, "bf16"), (0.02, "fp32")])
def test_auto_runs_the_cached_choice_exactly(tmp_path, monkeypatch, scene, checkpoint,
                                             bf16_seconds, expected):
    assert _seed_cache(monkeypatch, tmp_path, fp32=0.01, bf16=bf16_seconds) == expected
    result = geoddu.segment(scene, tmp_path / "out.tif", checkpoint, precision="auto")
    assert result.precision == expected and f"in {expected}" in result.summary()
    with rasterio.open(scene) as src:
        image = src.read()
    want = geoddu.load_model(checkpoint, precision=expected).predict(image)
    with rasterio.open(tmp_path / "out.tif") as out:
        np.testing.assert_array_equal(out.read(1), want)
    # The plan is made for the chosen precision: bf16 skips take half the bytes.
    plan = plan_job(SegmentRequest(src=scene, output=tmp_path / "p.tif", model=checkpoint,
                                   precision="auto"))
    fixed = plan_job(SegmentRequest(src=scene, output=tmp_path / "p.tif", model=checkpoint,
                                    precision=expected))
    assert plan.to_dict() == fixed.to_dict()
    # The CLI takes it too.
    run = CliRunner().invoke(cli, ["segment", str(scene), "-o", str(tmp_path / "cli.tif"),
                                   "-m", str(checkpoint), "--precision", "auto", "-q"])
    assert run.exit_code == 0, run.output
    assert geoddu.load_model(checkpoint, precision="auto").precision == expected


def test_an_unknown_precision_is_refused_in_one_line(tmp_path, scene, checkpoint):
    run = CliRunner().invoke(cli, ["segment", str(scene), "-o", str(tmp_path / "o.tif"),
                                   "-m", str(checkpoint), "--precision", "int4"])
    assert run.exit_code == 2 and "int4" in run.output
    with pytest.raises(geoddu.GeodduError, match="unknown precision 'int4'"):
        SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint, precision="int4")
