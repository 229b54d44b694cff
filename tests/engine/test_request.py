"""One segment request: checked once when built, the same object from every front, and sent to
a subprocess as JSON (`geoddu segment --request`)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio

from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError


def test_checked_when_built(tmp_path):
    ok = dict(src="a.tif", output="o.tif", model="m.pt")
    SegmentRequest(**ok)
    for bad, needle in [
        (dict(precision="fp8"), "precision"),
        (dict(bands=[0, 1]), "start at 1"),
        (dict(subimage_size=0), "--subimage-size"),
        (dict(vector_min_area=5.0), "needs --vector"),
        (dict(aoi_where="id = 1"), "need --aoi"),
        (dict(probabilities="o.tif"), "same file"),
        (dict(vector="a.tif"), "input"),
    ]:
        with pytest.raises(GeodduError, match=needle):
            SegmentRequest(**ok, **bad)


def test_json_round_trip_and_unknown_fields():
    r = SegmentRequest(src="a b;$.tif", output="-o.tif", model="m.pt", bands=[3, 1],
                       aoi="x#1.gpkg", aoi_where="id = 'x'", vector="v.fgb", cog=True)
    back = SegmentRequest.from_json(r.to_json())
    assert back == r and back.bands == (3, 1)
    with pytest.raises(GeodduError, match="unknown field"):
        SegmentRequest.from_dict({**r.to_dict(), "colour": 1})
    with pytest.raises(GeodduError, match="missing model"):
        SegmentRequest.from_dict({"src": "a.tif", "output": "o.tif"})


def test_the_cli_runs_a_request_from_stdin(tmp_path, scene, checkpoint):
    """What the QGIS bridge does: the whole run as JSON, no path on the command line."""
    import geoddu

    out = tmp_path / "-out;$ 'x'.tif"
    request = SegmentRequest(src=str(scene), output=str(out), model=str(checkpoint),
                             probabilities=str(tmp_path / "p.tif"))
    r = subprocess.run([sys.executable, "-m", "geoddu.cli", "segment", "--request", "-", "-q"],
                       input=request.to_json(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    geoddu.segment(scene, tmp_path / "ref.tif", checkpoint, probabilities=tmp_path / "rp.tif")
    for got, ref in ((out, "ref.tif"), (tmp_path / "p.tif", "rp.tif")):
        with rasterio.open(got) as a, rasterio.open(tmp_path / ref) as b:
            np.testing.assert_array_equal(a.read(), b.read())
    bad = subprocess.run([sys.executable, "-m", "geoddu.cli", "segment", "--request", "-"],
                         input='{"src": "a.tif"}', capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.splitlines() == [
        "Error: request: missing model, output"]
