"""`geoddu sample`: allocation rules, Olofsson's sample size, the draw (pixel centres of the
stated class, never nodata, no duplicates, reproducible per seed), the layer, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.transform import from_origin

from geoddu.accuracy import draw_sample, sample
from geoddu.accuracy.allocation import (
    allocate,
    cochran_sample_size,
    parse_expected_ua,
    resolve_expected_ua,
)
from geoddu.accuracy.sampling import _distinct_ranks
from geoddu.errors import GeodduError

EPSG = "EPSG:32633"
TRANSFORM = from_origin(500_000, 6_000_000, 10, 10)
NAMES = ["water", "forest", "urban", "bare", "snow"]  # "snow" (4) is named but not mapped
H, W = 200, 300
RARE = [(150, 10), (150, 11), (151, 200), (180, 299), (199, 0), (60, 150), (100, 100)]


def write_map(path: Path, cls: np.ndarray, names: list[str] | None = NAMES,
              crs: str | None = EPSG) -> Path:
    with rasterio.open(path, "w", driver="GTiff", height=cls.shape[0], width=cls.shape[1],
                       count=1, dtype="uint8", crs=crs, transform=TRANSFORM, nodata=255,
                       tiled=True, blockxsize=64, blockysize=64) as ds:
        ds.write(cls, 1)
        if names:
            ds.update_tags(CLASS_NAMES=json.dumps(names))
    return path


def make_classes() -> np.ndarray:
    rng = np.random.default_rng(3)
    cls = rng.choice(np.array([0, 1, 2], dtype=np.uint8), size=(H, W), p=[0.6, 0.3, 0.1])
    cls[:15] = 255  # a nodata band and a nodata hole
    cls[90:120, 40:90] = 255
    for r, c in RARE:
        cls[r, c] = 3  # 7 pixels of the rare class
    return cls


@pytest.fixture
def class_map(tmp_path):
    cls = make_classes()
    return write_map(tmp_path / "landcover.tif", cls), cls


# -- allocation ------------------------------------------------------------------------------
def test_proportional_allocation_then_the_minimum_per_class():
    counts = {0: 6000, 1: 3000, 2: 900, 3: 100}
    assert allocate(counts, 100) == {0: 60, 1: 30, 2: 9, 3: 1}
    # Classes 2 and 3 are raised to 10; classes 0 and 1 share the remaining 80 as 2:1
    # (53.33 and 26.67: the larger remainder gets the spare point).
    assert allocate(counts, 100, min_per_class=10) == {0: 53, 1: 27, 2: 10, 3: 10}
    # Raising one class can push another below the minimum: repeated until none is.
    assert allocate({0: 9000, 1: 700, 2: 300}, 40, min_per_class=10) == {0: 20, 1: 10, 2: 10}
    # Ties in the remainders go to the lower class id; the total is exactly n.
    assert allocate({5: 1, 2: 1, 9: 1}, 2) == {2: 1, 5: 1, 9: 0}
    # A class with fewer pixels than its minimum gets all of them (and counts as fixed).
    assert allocate({0: 1000, 1: 5}, 100, min_per_class=20) == {0: 95, 1: 5}
    # ... and with fewer pixels than its proportional share: all of them, the total shrinks.
    assert allocate({0: 10, 1: 10}, 50) == {0: 10, 1: 10}
    # The minimums alone exceed n: every class gets its minimum.
    assert allocate({0: 1000, 1: 1000, 2: 1000}, 10, min_per_class=5) == {0: 5, 1: 5, 2: 5}
    # Classes without pixels are no strata.
    assert allocate({0: 10, 1: 0}, 4) == {0: 4}
    with pytest.raises(GeodduError, match="no valid pixel"):
        allocate({0: 0}, 4)
    with pytest.raises(GeodduError, match="at least 1"):
        allocate({0: 10}, 0)


def test_cochran_sample_size_reproduces_olofsson_and_a_hand_computed_n():
    # Olofsson et al. (2014), Section 5's worked example: n = 641.
    weights = {1: 0.02, 2: 0.015, 3: 0.32, 4: 0.645}
    ua = {1: 0.70, 2: 0.60, 3: 0.90, 4: 0.95}
    assert cochran_sample_size(weights, ua, 0.01) == 641
    # By hand: S = sqrt(.8 * .2) = .4 and sqrt(.9 * .1) = .3; (0.5*.4 + 0.5*.3) / 0.01 = 35,
    # n = 35^2 = 1225 (in floats 1224.9999..., which must not round up to 1226).
    assert cochran_sample_size({0: 0.5, 1: 0.5}, {0: 0.8, 1: 0.9}, 0.01) == 1225
    assert cochran_sample_size({0: 0.5, 1: 0.5}, {0: 0.8, 1: 0.9}, 0.02) == math.ceil(35**2 / 4)


def test_expected_ua_parsing_and_resolution():
    assert parse_expected_ua("0.8") == {"*": 0.8}
    assert parse_expected_ua("0.85, water=0.95,3=0.7") == {"*": 0.85, "water": 0.95, "3": 0.7}
    for bad, msg in (("1.5", "between 0 and 1"), ("water=abc", "not a number"),
                     ("=0.8", "CLASS=ACCURACY"), ("0.8,0.9", "given twice"), ("", "no expected")):
        with pytest.raises(GeodduError, match=msg):
            parse_expected_ua(bad)
    names = dict(enumerate(NAMES))
    got = resolve_expected_ua(parse_expected_ua("0.8,Water=0.9,2=0.7"), [0, 1, 2], names, "m")
    assert got == {0: 0.9, 1: 0.8, 2: 0.7}
    with pytest.raises(GeodduError, match="class 'clouds', which m does not have"):
        resolve_expected_ua({"clouds": 0.8, "*": 0.8}, [0, 1], names, "m")
    with pytest.raises(GeodduError, match="no expected user's accuracy for class 1"):
        resolve_expected_ua({"water": 0.8}, [0, 1], names, "m")


def test_distinct_ranks_are_distinct_sorted_and_in_range():
    rng = np.random.default_rng(0)
    for population, k in ((10, 10), (10, 12), (1000, 7), (1000, 900), (10**12, 50)):
        r = _distinct_ranks(rng, population, k)
        assert r.size == min(k, population) and np.all(np.diff(r) > 0)
        assert r[0] >= 0 and r[-1] < population
    # Uniform: over many draws every element of a small population is chosen about equally.
    hits = np.zeros(20)
    for seed in range(2000):
        hits[_distinct_ranks(np.random.default_rng(seed), 20, 5)] += 1
    assert hits.sum() == 10_000 and np.all(np.abs(hits - 500) < 100)


# -- the draw --------------------------------------------------------------------------------
# 64: windows made of whole 64^2 tiles (reopened per window); 48: windows cut across tiles.
@pytest.mark.parametrize("window", [64, 48])
def test_points_are_pixel_centres_of_their_class_never_nodata_never_twice(class_map, window):
    src, cls = class_map
    d = draw_sample(src, n=400, min_per_class=20, seed=11, window_size=window)
    valid = cls != 255
    counts = np.bincount(cls[valid], minlength=5)
    assert d.windows == math.ceil(H / window) * math.ceil(W / window)
    assert [s.class_id for s in d.strata] == [0, 1, 2, 3]  # snow (4) has no pixel
    assert [s.pixels for s in d.strata] == counts[:4].tolist()
    assert [s.name for s in d.strata] == NAMES[:4]
    assert sum(s.weight for s in d.strata) == pytest.approx(1.0)
    assert d.strata[0].area_ha == pytest.approx(counts[0] * 100 / 10_000)  # 10 m pixels
    # The rare class gets all its 7 pixels (fewer than the minimum of 20).
    assert d.strata[3].points == 7
    assert {(r, c) for r, c, k in zip(d.rows, d.cols, d.classes, strict=True) if k == 3} == set(
        RARE)
    assert d.rows.size == sum(s.points for s in d.strata) == 400  # the others share 393
    assert np.all(cls[d.rows, d.cols] == d.classes)  # never nodata: 255 is no class
    assert len(set(zip(d.rows.tolist(), d.cols.tolist(), strict=True))) == d.rows.size
    for s in d.strata:
        assert np.count_nonzero(d.classes == s.class_id) == s.points
    # Centres: the inverse transform puts every point at (col + 0.5, row + 0.5).
    col, row = ~TRANSFORM * (d.x, d.y)
    assert np.allclose(col, d.cols + 0.5) and np.allclose(row, d.rows + 0.5)


def test_reproducible_per_seed_and_different_per_seed(class_map):
    src, _ = class_map
    a = draw_sample(src, n=200, seed=5, window_size=64)
    b = draw_sample(src, n=200, seed=5, window_size=64)
    c = draw_sample(src, n=200, seed=6, window_size=64)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert not (np.array_equal(a.rows, c.rows) and np.array_equal(a.cols, c.cols))
    # Without a seed one is drawn and reported; it reproduces the sample.
    e = draw_sample(src, n=50, window_size=64)
    f = draw_sample(src, n=50, seed=e.seed, window_size=64)
    assert np.array_equal(e.rows, f.rows) and np.array_equal(e.cols, f.cols)


def test_olofsson_allocation_on_a_map(class_map):
    src, cls = class_map
    d = draw_sample(src, expected_ua={"*": 0.8, "water": 0.9},
                    target_se=0.02, min_per_class=10, seed=1, window_size=64)
    counts = np.bincount(cls[cls != 255], minlength=4)[:4]
    w = counts / counts.sum()
    s = np.sqrt(np.array([0.9 * 0.1, 0.8 * 0.2, 0.8 * 0.2, 0.8 * 0.2]))
    n = math.ceil((float(w @ s) / 0.02) ** 2)
    assert d.design == "olofsson" and d.n_requested == n and d.target_se == 0.02
    assert [st.expected_ua for st in d.strata] == [0.9, 0.8, 0.8, 0.8]
    assert d.strata[3].points == 7 and d.strata[2].points >= 10
    assert d.rows.size == n  # the other classes share what the rare class cannot hold


# -- the layer and the command ---------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".fgb", ".shp"])
def test_layer_reads_back_in_the_map_crs_with_the_fields(class_map, tmp_path, suffix):
    src, cls = class_map
    out = tmp_path / f"points{suffix}"
    result = sample(src, out, n=120, min_per_class=10, seed=3, window_size=64)
    g = gpd.read_file(out)
    assert g.crs.to_epsg() == 32633
    assert len(g) == result.points == 120
    if suffix == ".shp":  # 10-character field names
        g = g.rename(columns={"class_name": "map_class_name", "stratum_px": "stratum_pixels",
                              "stratum_w": "stratum_weight"})
    assert list(g.columns) == ["point_id", "map_class", "map_class_name", "stratum_pixels",
                               "stratum_weight", "row", "col", "reference", "geometry"]
    assert g.point_id.tolist() == list(range(1, len(g) + 1))
    assert g.reference.isna().all()
    assert np.all(cls[g.row, g.col] == g.map_class)
    names = np.array(NAMES)[g.map_class]
    assert (g.map_class_name == names).all()
    counts = np.bincount(cls[cls != 255], minlength=4)
    assert (g.stratum_pixels == counts[g.map_class]).all()
    assert np.allclose(g.stratum_weight, counts[g.map_class] / counts[:4].sum())
    assert np.allclose(g.geometry.x, TRANSFORM.c + 10 * (g.col + 0.5))
    assert np.allclose(g.geometry.y, TRANSFORM.f - 10 * (g.row + 0.5))
    assert not [p for p in tmp_path.iterdir() if ".geoddu-tmp-" in p.name]


def test_cli_table_json_and_reproducible(class_map, tmp_path):
    src, _ = class_map
    runner = CliRunner()
    out = tmp_path / "p.gpkg"
    r = runner.invoke(cli, ["sample", str(src), "-o", str(out), "--n", "60",
                            "--min-per-class", "5", "--seed", "2"])
    assert r.exit_code == 0, r.output
    for word in ("water", "forest", "bare", "area", "points", "seed 2"):
        assert word in r.stdout
    r = runner.invoke(cli, ["sample", str(src), "-o", str(tmp_path / "q.gpkg"), "--n", "60",
                            "--min-per-class", "5", "--seed", "2", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["points"] == 60 and summary["seed"] == 2
    assert [s["points"] for s in summary["strata"]][3] == 5
    a, b = gpd.read_file(out), gpd.read_file(tmp_path / "q.gpkg")
    assert a.geometry.equals(b.geometry)
    r = runner.invoke(cli, ["sample", str(src), "-o", str(tmp_path / "o.gpkg"),
                            "--expected-ua", "0.85,water=0.9", "--target-se", "0.02", "-q"])
    assert r.exit_code == 0 and r.stdout == ""


def _only_error_line(r, text: str, code: int = 1) -> None:
    assert r.exit_code == code, r.output
    # Progress lines in a pipe (the map is read before some errors can be found), then one line.
    *progress, last = r.stderr.strip().splitlines()
    assert last.startswith("Error: ") and text in last, r.stderr
    assert all(line.startswith(("count pixels: ", "pick points: ")) for line in progress)


def test_one_line_errors_leave_nothing(class_map, tmp_path):
    src, cls = class_map
    runner = CliRunner()
    out = tmp_path / "p.gpkg"

    def run(*args: str):
        return runner.invoke(cli, ["sample", str(src), "-o", str(out), *args])

    empty = write_map(tmp_path / "empty.tif", np.full_like(cls, 255))
    r = runner.invoke(cli, ["sample", str(empty), "-o", str(out), "--n", "10"])
    _only_error_line(r, "has no valid pixel")
    _only_error_line(run("--expected-ua", "0.8,clouds=0.9"), "class 'clouds'")
    _only_error_line(run("--expected-ua", "1.5"), "between 0 and 1", 2)
    _only_error_line(run("--expected-ua", "water=x"), "not a number", 2)
    _only_error_line(run("--n", "0"), "--n", 2)
    _only_error_line(run("--n", "10", "--min-per-class", "-1"), "--min-per-class", 2)
    _only_error_line(run("--expected-ua", "0.8", "--target-se", "0"), "--target-se", 2)
    _only_error_line(run("--n", "10", "--seed", "-3"), "--seed", 2)
    _only_error_line(run(), "give --n N or --expected-ua", 2)
    _only_error_line(run("--n", "5", "--expected-ua", "0.8"), "not both", 2)
    _only_error_line(run("--n", "5", "--target-se", "0.01"), "--target-se goes with", 2)
    _only_error_line(runner.invoke(cli, ["sample", str(src), "-o", str(tmp_path / "p.csv"),
                                         "--n", "5"]), "unknown vector format")
    no_crs = write_map(tmp_path / "nocrs.tif", cls, crs=None)
    r = runner.invoke(cli, ["sample", str(no_crs), "-o", str(out), "--n", "5"])
    _only_error_line(r, "has no CRS")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.tif", "landcover.tif",
                                                          "nocrs.tif"]
    # An existing output is kept, unless --overwrite.
    out.write_text("keep")
    _only_error_line(run("--n", "5"), "exists; pass --overwrite")
    assert out.read_text() == "keep"
    assert run("--n", "5", "--overwrite", "-q").exit_code == 0
    assert len(gpd.read_file(out)) == 5


def test_a_failure_while_writing_leaves_nothing(class_map, tmp_path, monkeypatch):
    src, _ = class_map
    import pyogrio.raw

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(pyogrio.raw, "write", broken)
    with pytest.raises(GeodduError, match="cannot write GPKG: disk on fire"):
        sample(src, tmp_path / "p.gpkg", n=10, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landcover.tif"]


def test_category_names_from_the_pam_sidecar(tmp_path):
    """A map from another tool: category names only in GDAL's MAP.aux.xml."""
    cls = make_classes()
    src = write_map(tmp_path / "other.tif", cls, names=None)
    Path(str(src) + ".aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><CategoryNames><Category>sea</Category>'
        "<Category>wood</Category><Category></Category><Category>rock</Category>"
        "</CategoryNames></PAMRasterBand></PAMDataset>")
    d = draw_sample(src, n=20, seed=0)
    assert [s.name for s in d.strata] == ["sea", "wood", "class 2", "rock"]


def test_cancel_and_progress(class_map, tmp_path):
    from geoddu.errors import Cancelled

    src, _ = class_map
    seen = []
    sample(src, tmp_path / "p.gpkg", n=30, seed=1, window_size=64,
           progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert seen[0] == ("count", 1, 20) and ("count", 20, 20) in seen
    assert ("pick", 20, 20) in seen and seen[-1] == ("write_points", 1, 1)
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 25  # during the second pass

    with pytest.raises(Cancelled, match="nothing was written"):
        sample(src, tmp_path / "q.gpkg", n=30, seed=1, window_size=64, cancel=cancel)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["landcover.tif", "p.gpkg"]
