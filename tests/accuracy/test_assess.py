"""`geoddu assess` on real files: a class map GeoTIFF with category names, reference points
in another CRS, polygons, a reference raster; what is left out; the outputs; the errors."""

from __future__ import annotations

import csv
import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.transform import from_origin
from shapely.geometry import Point, box

from geoddu.accuracy.assess import assess
from geoddu.accuracy.estimators import estimate
from geoddu.accuracy.reference import (
    EMPTY,
    NODATA_PIXELS,
    ON_NODATA,
    OUTSIDE,
    UNKNOWN,
    UNKNOWN_PIXELS,
)
from geoddu.io.writer import class_map_pam_xml

H, W, PIXEL = 60, 80, 10.0
TRANSFORM = from_origin(500_000, 4_000_000, PIXEL, PIXEL)
CRS = "EPSG:32631"
NAMES = ["water", "forest", "crop"]


def class_array() -> np.ndarray:
    cls = np.zeros((H, W), np.uint8)  # water
    cls[:, 20:50] = 1  # forest
    cls[:, 50:] = 2  # crop
    cls[50:, 60:] = 255  # nodata corner
    return cls


def write_map(path, cls, *, crs=CRS, tags=True, pam=False, transform=TRANSFORM):
    with rasterio.open(path, "w", driver="GTiff", width=cls.shape[1], height=cls.shape[0],
                       count=1, dtype="uint8", crs=crs, transform=transform, nodata=255) as ds:
        ds.write(cls, 1)
        if tags:
            ds.update_tags(CLASS_NAMES=json.dumps(NAMES))
    if pam:
        (path.parent / f"{path.name}.aux.xml").write_bytes(
            class_map_pam_xml(NAMES, [(0, 0, 255), (0, 128, 0), (255, 255, 0)]))
    return path


def centre(row: int, col: int) -> Point:
    x, y = TRANSFORM * (col + 0.5, row + 0.5)
    return Point(x, y)


@pytest.fixture
def class_map(tmp_path):
    return write_map(tmp_path / "map.tif", class_array())


# (row, col, reference value): map classes there are water for col<20, forest 20-49, crop 50+
POINTS = [
    (5, 5, "water"), (6, 6, "water"), (7, 7, "forest"), (8, 8, "0"),
    (10, 25, "forest"), (11, 26, "Forest"), (12, 27, "1"), (13, 28, "crop"), (14, 29, "forest"),
    (20, 55, "crop"), (21, 56, "2"), (22, 57, "crop"), (23, 58, "water"),
]
EXPECTED = np.array([[3, 1, 0], [0, 4, 1], [1, 0, 3]])  # rows map, columns reference


def write_points(tmp_path, extra=()):
    """Points in WGS 84 (the map is UTM 31N): the reprojection is part of what is tested."""
    rows = [(centre(r, c), v) for r, c, v in POINTS] + list(extra)
    gdf = gpd.GeoDataFrame({"reference": [v for _, v in rows]},
                           geometry=[g for g, _ in rows], crs=CRS).to_crs("EPSG:4326")
    path = tmp_path / "points.gpkg"
    gdf.to_file(path)
    return path


def test_points_in_another_crs(tmp_path, class_map):
    outside = Point(TRANSFORM * (W + 5, 3))
    extra = [(outside, "water"), (centre(55, 70), "crop"), (centre(2, 2), "wetland"),
             (centre(3, 3), None)]
    ref = write_points(tmp_path, extra)
    result = assess(class_map, ref, class_column="reference")
    assert result.estimates.classes == NAMES
    assert result.estimates.counts.tolist() == EXPECTED.tolist()
    assert result.sample.used == len(POINTS)
    assert result.sample.skipped_counts == {OUTSIDE: 1, ON_NODATA: 1, UNKNOWN: 1, EMPTY: 1}
    listed = {s.reason: s for s in result.sample.skipped}
    assert listed[UNKNOWN].value == "wetland" and listed[OUTSIDE].index == len(POINTS)
    cls = class_array()
    mapped = np.array([(cls == i).sum() for i in range(3)])
    assert result.mapped_pixels.tolist() == mapped.tolist()
    # Areas in hectares: 100 m² pixels; the figures are the estimator's on the same inputs.
    want = estimate(EXPECTED, mapped * 100 / 10_000)
    assert result.estimates.area == pytest.approx(want.area)
    assert result.estimates.overall == pytest.approx(want.overall)
    assert result.estimates.mapped_area == pytest.approx(mapped / 100)
    assert any("left out" in n for n in result.notes)


def test_cli_outputs_and_their_contents(tmp_path, class_map):
    ref = write_points(tmp_path, [(centre(55, 70), "crop")])
    out_json, out_csv, out_html = (tmp_path / n for n in ("a.json", "a.csv", "a.html"))
    runner = CliRunner()
    args = ["assess", str(class_map), "--reference", str(ref), "--class-column", "reference"]
    r = runner.invoke(cli, [*args, "--json", str(out_json), "--csv", str(out_csv),
                            "--report", str(out_html)])
    assert r.exit_code == 0, r.output
    assert "Sample error matrix" in r.stdout and "overall accuracy" in r.stdout
    assert "on the map's nodata" in r.stdout  # the left-out table
    data = json.loads(out_json.read_text())
    assert data["sample_counts"] == EXPECTED.tolist() and data["classes"] == NAMES
    assert data["skipped"] == {ON_NODATA: 1} and data["area_unit"] == "ha"
    rows = list(csv.DictReader(out_csv.open()))
    oa = [r for r in rows if r["metric"] == "overall_accuracy"][0]
    assert float(oa["estimate"]) == pytest.approx(data["overall_accuracy"]["estimate"])
    cell = [r for r in rows if r["metric"] == "sample_count" and r["class"] == "forest"
            and r["reference_class"] == "crop"][0]
    assert float(cell["estimate"]) == 1
    page = out_html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "background:#" in page and "<script" not in page
    # JSON to stdout; and the outputs are not replaced without --overwrite
    r = runner.invoke(cli, [*args, "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["classes"] == NAMES
    r = runner.invoke(cli, [*args, "--csv", str(out_csv)])
    assert r.exit_code == 1 and "exists; pass --overwrite" in r.stderr
    r = runner.invoke(cli, [*args, "--csv", str(out_csv), "--overwrite", "-q"])
    assert r.exit_code == 0 and r.stdout.startswith("overall accuracy")


def test_polygons_count_pixels(tmp_path, class_map):
    # Pixel-aligned boxes: 4x4 pixels inside water (said water), 6x2 across forest/crop (said
    # crop), and one half off the map (said forest: 3x3 pixels of water on the map).
    def cells(r0, c0, r1, c1):
        (x0, y0), (x1, y1) = TRANSFORM * (c0, r1), TRANSFORM * (c1, r0)
        return box(x0, y0, x1, y1)

    # A fourth reaches into the nodata corner: 12 crop pixels, 4 on nodata.
    gdf = gpd.GeoDataFrame({"cls": ["water", "crop", "forest", "crop"]},
                           geometry=[cells(0, 0, 4, 4), cells(30, 48, 36, 50).union(
                               cells(30, 50, 36, 52)), cells(-5, 0, 3, 3),
                               cells(48, 58, 52, 62)], crs=CRS)
    ref = tmp_path / "polygons.gpkg"
    gdf.to_crs("EPSG:3857").to_file(ref)
    result = assess(class_map, ref, class_column="cls")
    counts = result.estimates.counts
    assert result.sample_unit == "pixels" and result.reference_kind == "polygons"
    assert counts[0, 0] == 16 and counts[0, 1] == 9  # water map: 16 said water, 9 forest
    assert counts[1, 2] == 12 and counts[2, 2] == 12 + 12  # crop polygons over forest, crop
    assert counts.sum() == 16 + 9 + 24 + 12
    assert result.sample.skipped_counts == {NODATA_PIXELS: 4}
    assert any("counts pixels" in n for n in result.notes)


def test_reference_raster_same_grid_and_refused_otherwise(tmp_path, class_map):
    cls = class_array()
    ref = cls.copy()
    ref[:10, :10] = 1  # forest on the ground where water is mapped
    ref[0, 79] = 255  # no reference there
    ref[50:, 60:] = 2  # crop on the ground where the map has nodata: 200 pixels
    ref[30, 30] = 7  # not a class of the map
    path = write_map(tmp_path / "ref.tif", ref)
    result = assess(class_map, path)
    valid = (cls != 255) & (ref < 3)
    want = np.zeros((3, 3), int)
    np.add.at(want, (cls[valid], ref[valid]), 1)
    assert result.estimates.counts.tolist() == want.tolist()
    assert result.sample.skipped_counts == {NODATA_PIXELS: 200, UNKNOWN_PIXELS: 1}
    assert result.reference_kind == "raster"
    shifted = write_map(tmp_path / "shifted.tif", ref,
                        transform=from_origin(500_010, 4_000_000, PIXEL, PIXEL))
    r = CliRunner().invoke(cli, ["assess", str(class_map), "-r", str(shifted)])
    assert r.exit_code == 1 and "not on the map's grid" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_names_from_the_pam_sidecar(tmp_path):
    path = write_map(tmp_path / "pam.tif", class_array(), tags=False, pam=True)
    ref = write_points(tmp_path)
    result = assess(path, ref, class_column="reference")
    assert result.estimates.classes == NAMES
    assert result.estimates.counts.tolist() == EXPECTED.tolist()


def test_one_line_errors(tmp_path, class_map):
    ref = write_points(tmp_path)
    runner = CliRunner()
    geographic = write_map(tmp_path / "geo.tif", class_array(), crs="EPSG:4326",
                           transform=from_origin(3, 45, 0.001, 0.001))
    cases = [
        (["assess", str(class_map), "-r", str(ref)], "give --class-column"),
        (["assess", str(class_map), "-r", str(ref), "--class-column", "nope"], "no column 'nope'"),
        (["assess", str(tmp_path / "missing.tif"), "-r", str(ref), "--class-column", "x"],
         "class map not found"),
        (["assess", str(class_map), "-r", str(tmp_path / "none.gpkg"), "--class-column", "x"],
         "not found"),
        (["assess", str(geographic), "-r", str(ref), "--class-column", "reference"],
         "CRS is geographic"),
        (["assess", str(class_map), "-r", str(ref), "--class-column", "reference",
          "--csv", str(class_map)], "would destroy the input"),
    ]
    for args, message in cases:
        r = runner.invoke(cli, args)
        assert r.exit_code == 1, (args, r.output)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("*.csv"))
