"""The `geoddu vectorize` command: its options, its JSON summary, its one-line errors.
"""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import rasterio.features
from class_maps import PIXEL, blocky, burn, cells, pixel_regions, write_classes
from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.vectorize import SIEVES, vectorize


def test_cli_json_and_errors(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "landcover.gpkg"
    runner = CliRunner()
    args = ["vectorize", str(src), "-o", str(out), "--window-size", "64", "--classes", "1,3"]
    r = runner.invoke(cli, [*args, "--min-area", "500", "--simplify", "5", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["output"] == str(out) and summary["classes"] == [1, 3]
    assert summary["min_area_pixels"] == 5 and summary["driver"] == "GPKG"
    assert len(gpd.read_file(out)) == summary["polygons"]
    # GDAL's sieve at 5 px, then the regions of classes 1 and 3 (simplifying keeps them all).
    sieved = rasterio.features.sieve(cls, 5, mask=cls != 255, connectivity=4)
    assert summary["sieve"] == "gdal"
    assert summary["sieved_pixels"] == np.count_nonzero(sieved != cls)
    assert summary["polygons"] == sum(1 for v, _ in pixel_regions(sieved) if v in (1, 3))

    r = runner.invoke(cli, args)
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr
    r = runner.invoke(cli, [*args, "--overwrite", "--classes", "1,x"])
    assert r.exit_code == 2 and "comma-separated list of class ids" in r.stderr
    r = runner.invoke(cli, [*args, "--overwrite", "-q"])
    assert r.exit_code == 0 and r.stdout == ""


def test_cli_no_crs_is_one_line(tmp_path):
    src = write_classes(tmp_path / "nocrs.tif", blocky(), crs=None)
    r = CliRunner().invoke(cli, ["vectorize", str(src), "-o", str(tmp_path / "o.shp")])
    assert r.exit_code == 1 and r.stdout == ""
    assert r.stderr == f"Error: {src}: has no CRS; polygons need one\n"
    assert list(tmp_path.iterdir()) == [src]


def test_cli_sieve_option(tmp_path):
    cls = cells(seed=2)
    src = write_classes(tmp_path / "cells.tif", cls)
    runner = CliRunner()
    r = runner.invoke(cli, ["vectorize", "--help"])
    assert r.exit_code == 0 and "--sieve [gdal|smallest-first]" in r.stdout
    assert "[default: gdal]" in r.stdout and SIEVES == ("gdal", "smallest-first")
    for sieve in SIEVES:
        out = tmp_path / f"{sieve}.gpkg"
        r = runner.invoke(cli, ["vectorize", str(src), "-o", str(out), "--min-area", "1000",
                                "--sieve", sieve, "--json"])
        assert r.exit_code == 0, r.output
        summary = json.loads(r.stdout)
        assert summary["sieve"] == sieve and summary["min_area_pixels"] == 10
        # The same layer as the Python call with that sieve.
        api = vectorize(src, tmp_path / f"api-{sieve}.gpkg", min_area=10 * PIXEL**2, sieve=sieve)
        assert summary["sieved_pixels"] == api.sieved_pixels > 0
        assert np.array_equal(burn(gpd.read_file(out)), burn(gpd.read_file(api.output)))
    r = runner.invoke(cli, ["vectorize", str(src), "-o", str(tmp_path / "x.gpkg"),
                            "--min-area", "1000", "--sieve", "fast"])
    assert r.exit_code == 2 and "'fast' is not one of 'gdal', 'smallest-first'" in r.stderr
