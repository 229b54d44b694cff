"""`geoddu vectorize`: class rasters polygonised window by window and read back with geopandas:
the polygons, simplification, bad input, atomicity, the command line."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from class_maps import (
    EPSG,
    NAMES,
    PIXEL,
    TRANSFORM,
    WIN,
    H,
    W,
    blocky,
    canonical,
    pixel_regions,
    write_classes,
)
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.crs import CRS

from geoddu.errors import Cancelled, GeodduError
from geoddu.vectorize.polygonize import vectorize

# --- polygons ----------------------------------------------------------------------------------


def test_polygons_are_the_pixels_without_seams(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "out.gpkg"
    result = vectorize(src, out, window_size=WIN)
    assert result.windows == 4 * 5 and out.exists()
    gdf = gpd.read_file(out)
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert set(gdf.columns) == {"class_id", "class_name", "geometry"}
    assert (gdf.geom_type == "Polygon").all() and gdf.is_valid.all()
    assert dict(zip(gdf.class_id, gdf.class_name, strict=True)) == {
        i: NAMES[i] for i in np.unique(cls[cls != 255])
    }

    # Per class: polygon area = pixel count x pixel area, exactly.
    for c in range(5):
        area = gdf.area[gdf.class_id == c].sum()
        assert area == np.count_nonzero(cls == c) * PIXEL**2, c

    # No overlaps (sum of areas = area of the union), no gaps (union = the valid pixels).
    union = shapely.union_all(gdf.geometry.values)
    assert gdf.area.sum() == pytest.approx(union.area, rel=1e-12)
    valid = shapely.union_all(
        [
            shapely.geometry.shape(g)
            for g, _ in rasterio.features.shapes(
                (cls != 255).astype(np.uint8), mask=cls != 255, transform=TRANSFORM
            )
        ]
    )
    assert union.symmetric_difference(valid).area == 0

    # The road crosses 4 x 3 windows: one row, one polygon.
    road = gdf[gdf.class_id == 4]
    assert len(road) == 1 and road.geometry.iloc[0].geom_type == "Polygon"
    assert road.area.iloc[0] == np.count_nonzero(cls == 4) * PIXEL**2

    # Exactly the regions GDAL finds on the whole array at once, vertex for vertex.
    reference = gpd.GeoDataFrame(
        {"class_id": [v for v, _ in pixel_regions(cls)]},
        geometry=[g for _, g in pixel_regions(cls)],
    )
    assert canonical(gdf) == canonical(reference)
    assert result.polygons == len(reference)


def test_region_with_hole_spanning_windows(tmp_path):
    cls = np.zeros((H, W), np.uint8)
    cls[30:170, 40:260] = 1  # a frame of class 1 across many windows...
    cls[50:150, 60:240] = 2  # ...around class 2, with a class-1 island again inside
    cls[90:110, 130:150] = 1
    out = tmp_path / "ring.geojson"
    vectorize(write_classes(tmp_path / "ring.tif", cls), out, window_size=WIN)
    gdf = gpd.read_file(out)
    assert sorted(gdf.class_id) == [0, 1, 1, 2]
    ones = gdf[gdf.class_id == 1]
    frame = ones.geometry.iloc[int(np.argmax(ones.area))]
    assert len(frame.interiors) == 1 and frame.area == (140 * 220 - 100 * 180) * PIXEL**2
    assert gdf.area.sum() == H * W * PIXEL**2


def test_window_size_does_not_change_the_layer(tmp_path):
    src = write_classes(tmp_path / "noisy.tif", blocky(seed=3, noise=0.01))
    layers = []
    for window in (WIN, 97, 1024):
        out = tmp_path / f"w{window}.gpkg"
        vectorize(src, out, window_size=window)
        layers.append(canonical(gpd.read_file(out)))
    assert layers[0] == layers[1] == layers[2]


def test_classes_selects_rows(tmp_path, classes_tif):
    src, cls = classes_tif
    out = tmp_path / "some.fgb"
    result = vectorize(src, out, classes=[1, 4], window_size=WIN)
    gdf = gpd.read_file(out)
    assert set(gdf.class_id) == {1, 4}
    assert set(result.polygons_per_class) == {"urban", "road"}
    for c in (1, 4):
        assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2


@pytest.mark.parametrize("suffix", [".gpkg", ".geojson", ".json", ".fgb", ".shp"])
def test_formats(tmp_path, classes_tif, suffix):
    src, cls = classes_tif
    out = tmp_path / "out" / f"landcover{suffix}"
    out.parent.mkdir()
    result = vectorize(src, out, window_size=128)
    gdf = gpd.read_file(out)
    assert len(gdf) == result.polygons > 0
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert gdf.area.sum() == pytest.approx(np.count_nonzero(cls != 255) * PIXEL**2)
    names = sorted(p.name for p in out.parent.iterdir())
    if suffix == ".shp":
        assert names == [f"landcover{e}" for e in (".cpg", ".dbf", ".prj", ".shp", ".shx")]
    else:
        assert names == [out.name]  # no temporary file or folder left behind




# --- simplification ----------------------------------------------------------------------------


def test_simplify_keeps_a_coverage(tmp_path, classes_tif):
    src, cls = classes_tif
    plain = gpd.read_file(vectorize(src, tmp_path / "plain.gpkg", window_size=WIN).output)
    out = tmp_path / "simple.gpkg"
    vectorize(src, out, simplify=PIXEL, window_size=WIN)
    gdf = gpd.read_file(out)
    geoms = gdf.geometry.values
    assert len(gdf) == len(plain) and gdf.is_valid.all()
    assert shapely.coverage_is_valid(geoms)  # no overlaps, edges matched vertex for vertex
    union = shapely.union_all(geoms)
    assert gdf.area.sum() == pytest.approx(union.area, rel=1e-9)  # no overlaps
    # No gaps: the outline is kept, so the union is still exactly the valid pixels.
    assert union.area == pytest.approx(np.count_nonzero(cls != 255) * PIXEL**2, rel=1e-9)
    assert (
        shapely.get_num_coordinates(geoms).sum()
        < shapely.get_num_coordinates(plain.geometry.values).sum()
    )
    # Stated tolerance: simplifying at one pixel moves each class's area by less than 2 %.
    for c in range(5):
        before = np.count_nonzero(cls == c) * PIXEL**2
        after = gdf.area[gdf.class_id == c].sum()
        assert abs(after - before) < 0.02 * before, c


def test_simplify_with_classes_and_windows(tmp_path, classes_tif):
    src, _ = classes_tif
    full = vectorize(src, tmp_path / "full.gpkg", simplify=PIXEL, window_size=1024).output
    some = vectorize(src, tmp_path / "some.gpkg", simplify=PIXEL, classes=[2], window_size=WIN)
    full_gdf = gpd.read_file(full)
    # Simplified with all classes, then filtered: the same polygons as in the full layer.
    assert canonical(gpd.read_file(some.output)) == canonical(full_gdf[full_gdf.class_id == 2])


# --- bad input and atomicity -------------------------------------------------------------------


def test_raster_without_crs(tmp_path):
    src = write_classes(tmp_path / "nocrs.tif", blocky(), crs=None)
    out = tmp_path / "out.gpkg"
    with pytest.raises(GeodduError, match="has no CRS; polygons need one"):
        vectorize(src, out)
    assert list(tmp_path.iterdir()) == [src]


def test_errors_leave_nothing(tmp_path, classes_tif):
    src, _ = classes_tif
    with pytest.raises(GeodduError, match="unknown vector format '.kml'.*\\.gpkg"):
        vectorize(src, tmp_path / "out.kml")
    with pytest.raises(GeodduError, match="no class 7; its classes are 0=water"):
        vectorize(src, tmp_path / "out.gpkg", classes=[1, 7])
    empty = write_classes(tmp_path / "empty.tif", np.full((H, W), 255, np.uint8))
    with pytest.raises(GeodduError, match="no valid pixels"):
        vectorize(empty, tmp_path / "out.gpkg", window_size=WIN)
    with pytest.raises(GeodduError, match="no valid pixels of the selected classes"):
        # (geoddu's exact sieve merges every region into one per class-connected area)
        vectorize(src, tmp_path / "out.gpkg", classes=[4], window_size=WIN, min_area=1e9,
                  sieve="exact")
    geographic = write_classes(tmp_path / "geo.tif", blocky(), crs="EPSG:4326")
    with pytest.raises(GeodduError, match="degrees"):
        vectorize(geographic, tmp_path / "out.gpkg", min_area=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "empty.tif", "geo.tif"]


def test_not_a_class_map(tmp_path):
    profile = dict(driver="GTiff", width=W, height=H, crs=f"EPSG:{EPSG}", transform=TRANSFORM)
    floats = tmp_path / "floats.tif"
    with rasterio.open(floats, "w", count=1, dtype="float32", **profile) as ds:
        ds.write(np.zeros((1, H, W), np.float32))
    with pytest.raises(GeodduError, match="float32 values; a class map holds integer"):
        vectorize(floats, tmp_path / "out.gpkg")
    wide = tmp_path / "wide.tif"
    ids = blocky().astype(np.uint16)
    ids[5, 7] = 300
    with rasterio.open(wide, "w", count=1, dtype="uint16", nodata=255, **profile) as ds:
        ds.write(ids, 1)
    with pytest.raises(GeodduError, match="class id 300 at row 5, col 7 is outside 0..254"):
        vectorize(wide, tmp_path / "out.gpkg", window_size=WIN)
    ids[5, 7] = 2  # uint16 ids that fit are fine
    with rasterio.open(wide, "w", count=1, dtype="uint16", nodata=255, **profile) as ds:
        ds.write(ids, 1)
    result = vectorize(wide, tmp_path / "out.gpkg", window_size=WIN)
    assert set(result.polygons_per_class) == {"class 0", "class 1", "class 2", "class 3", "class 4"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["floats.tif", "out.gpkg", "wide.tif"]


def test_overwrite_and_cancel_are_atomic(tmp_path, classes_tif):
    src, _ = classes_tif
    out = tmp_path / "out.gpkg"
    out.write_bytes(b"precious")
    with pytest.raises(GeodduError, match="exists; pass --overwrite"):
        vectorize(src, out)
    seen = []

    def cancel() -> bool:
        return len(seen) >= 7  # mid-way through the windows

    with pytest.raises(Cancelled):
        vectorize(
            src,
            out,
            overwrite=True,
            window_size=WIN,
            cancel=cancel,
            progress=lambda stage, done, total: seen.append((stage, done, total)),
        )
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.tif", "out.gpkg"]
    seen.clear()
    vectorize(
        src,
        out,
        overwrite=True,
        window_size=WIN,
        min_area=300,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    assert [s for s in seen if s[1] == s[2]] == [
        ("sieve", 20, 20),
        ("polygonize", 20, 20),
        ("write", 1, 1),
    ]
    assert len(gpd.read_file(out)) > 0


# --- command line ------------------------------------------------------------------------------


def test_cli_json_and_errors(tmp_path, classes_tif):
    src, _ = classes_tif
    out = tmp_path / "landcover.gpkg"
    runner = CliRunner()
    args = ["vectorize", str(src), "-o", str(out), "--window-size", "64", "--classes", "1,3"]
    r = runner.invoke(cli, [*args, "--min-area", "500", "--simplify", "5", "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["output"] == str(out) and summary["classes"] == [1, 3]
    assert summary["min_area_pixels"] == 5 and summary["driver"] == "GPKG"
    assert len(gpd.read_file(out)) == summary["polygons"]

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
