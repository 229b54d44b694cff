"""`geoddu vectorize`: class rasters written by rasterio, polygonised window by window and read
back with geopandas. Windows of 64 px on 200 x 300 maps, so every test crosses window borders.
"""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.crs import CRS
from rasterio.transform import from_origin

from geoddu.errors import Cancelled, GeodduError
from geoddu.io.polygonize import vectorize

H, W = 200, 300
WIN = 64
PIXEL = 10.0  # m: pixel area 100 m^2
TRANSFORM = from_origin(500000, 4000000, PIXEL, PIXEL)
EPSG = 32631
NAMES = ["water", "urban", "forest", "crop", "road"]


def write_classes(path: Path, cls: np.ndarray, *, crs=f"EPSG:{EPSG}", names=NAMES) -> Path:
    profile = dict(
        driver="GTiff",
        width=cls.shape[1],
        height=cls.shape[0],
        count=1,
        dtype="uint8",
        transform=TRANSFORM,
        nodata=255,
        tiled=True,
        blockxsize=64,
        blockysize=64,
    )
    if crs is not None:
        profile["crs"] = crs
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(cls, 1)
        if names is not None:
            ds.update_tags(CLASS_NAMES=json.dumps(names))
    return path


def blocky(seed: int = 0, noise: float = 0.0) -> np.ndarray:
    """Wavy blocks of 4 classes, a nodata patch, and a long class-4 road across many windows."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = rng.integers(0, 4, (16, 16)).astype(np.uint8)
    by = (yy + (4 * np.sin(xx / 7.0)).astype(int)) // 21 + 1
    bx = (xx + (4 * np.cos(yy / 9.0)).astype(int)) // 27 + 1
    cls = base[by, bx]
    if noise:
        speck = rng.random((H, W)) < noise
        cls[speck] = rng.integers(0, 4, int(speck.sum()))
    cls[140:175, 20:70] = 255
    # An L-shaped road: crosses window borders in both directions, one region.
    cls[10:190, 100:104] = 4
    cls[120:124, 100:280] = 4
    return cls


def pixel_regions(cls: np.ndarray) -> list[tuple[int, shapely.Geometry]]:
    """Reference: the whole array polygonised at once, in map coordinates."""
    return [
        (int(v), shapely.geometry.shape(g))
        for g, v in rasterio.features.shapes(
            cls, mask=cls != 255, connectivity=4, transform=TRANSFORM
        )
    ]


def canonical(gdf: gpd.GeoDataFrame) -> list[tuple[int, bytes]]:
    geoms = shapely.normalize(gdf.geometry.values)
    return sorted(zip(gdf.class_id.tolist(), shapely.to_wkb(geoms), strict=True))


@pytest.fixture
def classes_tif(tmp_path: Path) -> tuple[Path, np.ndarray]:
    cls = blocky()
    return write_classes(tmp_path / "classes.tif", cls), cls


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


# --- sieving -----------------------------------------------------------------------------------


def test_min_area_judges_regions_across_window_borders(tmp_path):
    cls = np.zeros((H, W), np.uint8)
    cls[100:, :] = 2
    cls[62:65, 62:65] = 1  # 9 px on the corner of four windows: removed
    cls[20, 61:72] = 3  # 11 px, cut 3 + 8 by a window border: kept
    cls[30, 10:20] = 3  # exactly 10 px = the minimum area: kept
    cls[40:42, 10:14] = 3  # 8 px inside one window: removed
    cls[127:129, 127:130] = 1  # 6 px across 4 windows of class 2: removed, becomes 2
    cls[80:82, 200:202] = 255  # a small nodata hole stays a hole
    src = write_classes(tmp_path / "specks.tif", cls)
    out = tmp_path / "sieved.gpkg"
    result = vectorize(src, out, min_area=10 * PIXEL**2, window_size=WIN)
    assert result.min_area_pixels == 10 and result.sieved_pixels == 9 + 8 + 6
    gdf = gpd.read_file(out)
    assert sorted(gdf.class_id) == [0, 2, 3, 3]
    assert sorted(gdf.area[gdf.class_id == 3] / PIXEL**2) == [10, 11]
    assert gdf.area.sum() == (H * W - 4) * PIXEL**2

    # Here every small region lies in a single larger one: the same as GDAL's sieve of the
    # whole array.
    burnt = rasterio.features.rasterize(
        zip(gdf.geometry, gdf.class_id, strict=True),
        out_shape=cls.shape,
        transform=TRANSFORM,
        fill=255,
        dtype="uint8",
    )
    expected = rasterio.features.sieve(cls, 10, mask=cls != 255, connectivity=4)
    assert np.array_equal(burnt, expected)


def test_min_area_is_window_independent_and_leaves_no_small_region(tmp_path):
    cls = blocky(seed=5, noise=0.05)
    cls[cls == 255] = 0  # no nodata islands: every region has a neighbour
    src = write_classes(tmp_path / "noisy.tif", cls)
    layers = []
    for window in (WIN, 1024):
        out = tmp_path / f"s{window}.gpkg"
        vectorize(src, out, min_area=12 * PIXEL**2, window_size=window)
        gdf = gpd.read_file(out)
        assert gdf.area.min() >= 12 * PIXEL**2
        assert gdf.area.sum() == H * W * PIXEL**2
        layers.append(canonical(gdf))
    assert layers[0] == layers[1]


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
        vectorize(src, tmp_path / "out.gpkg", classes=[4], window_size=WIN, min_area=1e9)
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


# --- written as it goes ------------------------------------------------------------------------


def test_polygons_are_written_in_batches_and_memory_does_not_grow_with_the_map(tmp_path):
    """Complete regions leave in batches: the polygons held at once (waiting to be written, or
    pieces of regions still open) stay the same when the map is three times as tall."""
    noisy = blocky(seed=7, noise=0.1)
    results = {}
    for copies in (1, 3):
        cls = np.vstack([noisy] * copies)
        src = write_classes(tmp_path / f"n{copies}.tif", cls)
        out = tmp_path / f"n{copies}.gpkg"
        result = vectorize(src, out, window_size=WIN, batch_size=1000)
        gdf = gpd.read_file(out)
        assert len(gdf) == result.polygons
        for c in range(5):
            assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2
        results[copies] = result
    one, three = results[1], results[3]
    assert three.polygons > 2.9 * one.polygons
    assert three.batches == -(-three.polygons // 1000) and one.batches > 1
    # Bounded by a batch, one window's regions and the open regions, not by the layer.
    assert three.peak_held <= 1000 + WIN * WIN + 2 * W
    assert three.peak_held < 1.2 * one.peak_held
    assert three.peak_held < three.polygons / 5


def test_tiny_windows_are_seam_free_and_keep_every_class_area(tmp_path):
    cls = blocky(seed=11, noise=0.1)
    src = write_classes(tmp_path / "noisy.tif", cls)
    out = tmp_path / "tiny.gpkg"
    result = vectorize(src, out, window_size=16, batch_size=1000)  # 13 x 19 windows
    assert result.windows == 13 * 19 and result.batches > 1
    gdf = gpd.read_file(out)
    # Same per-class areas as rasterio.features.shapes on the whole map, and the same polygons:
    # no region is split at a window border.
    reference = pixel_regions(cls)
    for c in range(5):
        area = gdf.area[gdf.class_id == c].sum()
        assert area == sum(g.area for v, g in reference if v == c)
        assert area == np.count_nonzero(cls == c) * PIXEL**2
    assert len(gdf) == len(reference)
    assert canonical(gdf) == sorted(
        (v, shapely.to_wkb(shapely.normalize(g))) for v, g in reference
    )


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".fgb"])
def test_every_format_takes_many_batches(tmp_path, suffix):
    cls = blocky(seed=2, noise=0.05)
    src = write_classes(tmp_path / "noisy.tif", cls)
    out = tmp_path / "out" / f"layer{suffix}"
    out.parent.mkdir()
    result = vectorize(src, out, window_size=WIN, batch_size=400)
    assert result.batches == -(-result.polygons // 400) > 3
    gdf = gpd.read_file(out)
    assert len(gdf) == result.polygons
    assert gdf.crs == CRS.from_epsg(EPSG)
    assert dict(zip(gdf.class_id, gdf.class_name, strict=True)) == {
        i: NAMES[i] for i in np.unique(cls[cls != 255])
    }
    for c in range(5):
        assert gdf.area[gdf.class_id == c].sum() == np.count_nonzero(cls == c) * PIXEL**2
    suffixes = [".cpg", ".dbf", ".prj", ".shp", ".shx"] if suffix == ".shp" else [suffix]
    assert sorted(p.name for p in out.parent.iterdir()) == [f"layer{e}" for e in suffixes]


@pytest.mark.parametrize("suffix", [".geojson", ".fgb"])
def test_formats_without_gdal_arrow_writes_hold_the_layer(tmp_path, monkeypatch, suffix):
    """Where GDAL lacks the Arrow write (< 3.8), GeoJSON and FlatGeobuf batches are held as
    WKB and written at the end: the same layer as the staged route."""
    import pyogrio.raw

    cls = blocky(seed=2, noise=0.05)
    src = write_classes(tmp_path / "noisy.tif", cls)
    staged = vectorize(src, tmp_path / f"staged{suffix}", window_size=WIN, batch_size=400)
    monkeypatch.setattr(pyogrio.raw, "HAS_ARROW_WRITE_API", False)
    held = vectorize(src, tmp_path / f"held{suffix}", window_size=WIN, batch_size=400)
    assert held.polygons == staged.polygons and held.batches > 3
    a, b = gpd.read_file(tmp_path / f"staged{suffix}"), gpd.read_file(tmp_path / f"held{suffix}")
    assert a.class_id.tolist() == b.class_id.tolist()
    assert shapely.equals_exact(a.geometry.values, b.geometry.values, 0).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["noisy.tif", f"staged{suffix}", f"held{suffix}"])


@pytest.mark.parametrize("suffix", [".gpkg", ".shp", ".geojson", ".fgb"])
def test_failure_after_batches_were_written_leaves_nothing(tmp_path, suffix):
    """A class id out of range in the last window fails the run after several batches are in
    the temporary file: the destination stays as it was and no temporary file is left."""
    ids = blocky(seed=4, noise=0.1).astype(np.uint16)
    ids[H - 3, W - 5] = 300
    profile = dict(
        driver="GTiff", width=W, height=H, count=1, dtype="uint16", nodata=255,
        crs=f"EPSG:{EPSG}", transform=TRANSFORM, tiled=True, blockxsize=64, blockysize=64,
    )  # fmt: skip
    src = tmp_path / "bad.tif"
    with rasterio.open(src, "w", **profile) as ds:
        ds.write(ids, 1)
    out = tmp_path / f"out{suffix}"
    out.write_bytes(b"precious")
    written = []

    def progress(stage: str, done: int, total: int) -> None:
        temps = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
        written.append(sum(f.stat().st_size for t in temps for f in t.rglob("*") if f.is_file()))

    with pytest.raises(GeodduError, match="class id 300 at row 197, col 295"):
        vectorize(src, out, overwrite=True, window_size=WIN, batch_size=500, progress=progress)
    assert max(written) > 10_000  # batches had been written
    assert out.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tif", out.name]


def _merge_small_with_sets(edge, small, size, anchor, cls, threshold):
    """The sieve's decision step as first written (a Python set of neighbours per small
    region), kept here as the reference for the array form in geoddu.io.sieve."""
    import heapq

    adj = {int(r): set() for r in np.flatnonzero(small)}
    for a, b in edge.tolist():
        if a in adj:
            adj[a].add(b)
        if b in adj:
            adj[b].add(a)
    merged = {}

    def find(x):
        while x in merged:
            x = merged[x]
        return x

    heap = [(int(size[r]), int(anchor[r]), r) for r in adj]
    heapq.heapify(heap)
    while heap:
        s, _, r = heapq.heappop(heap)
        if r in merged or int(size[r]) != s or s >= threshold:
            continue
        nbrs = {find(x) for x in adj[r]} - {r}
        if not nbrs:
            adj.pop(r, None)
            continue
        best = max(nbrs, key=lambda x: (int(size[x]), -int(cls[x]), -int(anchor[x])))
        group = [x for x in nbrs if cls[x] == cls[best] and x != best] + [r]
        total = int(size[best]) + sum(int(size[x]) for x in group)
        for x in group:
            merged[x] = best
        anchor[best] = min(int(anchor[best]), *(int(anchor[x]) for x in group))
        size[best] = total
        if total < threshold:
            joined = adj.setdefault(best, set())
            for x in group:
                joined |= adj.pop(x, set())
            heapq.heappush(heap, (total, int(anchor[best]), best))
        else:
            for x in group:
                adj.pop(x, None)
            adj.pop(best, None)
    return merged


@pytest.mark.parametrize("seed", range(6))
def test_sieve_decision_in_flat_arrays_equals_the_set_form(seed):
    """The array form of the merge step (flat arrays, member lists) decides exactly what the
    set-per-region form decided, on random region graphs with chains of small regions."""
    from geoddu.io.sieve import _merge_small, _resolve, unique_pairs

    rng = np.random.default_rng(seed)
    n, threshold = 3000, 12
    size = np.where(rng.random(n) < 0.7, rng.integers(1, threshold, n),
                    rng.integers(threshold, 200, n)).astype(np.int64)
    size[0] = 0
    anchor = rng.permutation(n * 10)[:n].astype(np.int64)
    cls = rng.integers(0, 4, n).astype(np.uint8)
    a, b = rng.integers(1, n, 4 * n), rng.integers(1, n, 4 * n)
    small = np.zeros(n, bool)
    small[1:] = size[1:] < threshold
    keep = (a != b) & (small[a] | small[b])
    edge = unique_pairs(np.minimum(a, b)[keep], np.maximum(a, b)[keep])
    want = _resolve(_merge_small_with_sets(edge, small, size.copy(), anchor.copy(), cls,
                                           threshold), n)
    got = _resolve(_merge_small(edge, small, size.copy(), anchor.copy(), cls, threshold), n)
    assert (want != np.arange(n)).sum() > n // 4  # the graphs do merge a lot
    assert np.array_equal(got, want)
