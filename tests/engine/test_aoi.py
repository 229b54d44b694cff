"""Areas of interest: nodata outside, full-run classes inside, work bounded by the area."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from helpers import TRANSFORM, write_geotiff
from rasterio.features import geometry_mask
from shapely.geometry import Polygon

import geoddu
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import GeodduError


@pytest.fixture
def big_scene(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.integers(0, 255, (3, 256, 320), dtype=np.uint8)
    return write_geotiff(tmp_path / "big.tif", data, tiled=True, blockxsize=64, blockysize=64)


def _aoi_file(tmp_path, rows, cols, crs="EPSG:4326", invalid=False):
    """A polygon around pixel rows/cols, written in another CRS than the raster's."""
    (r0, r1), (c0, c1) = rows, cols
    x0, y0 = TRANSFORM * (c0, r0)
    x1, y1 = TRANSFORM * (c1, r1)
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if invalid:  # a bow-tie: self-intersecting, repaired with make_valid
        ring = [(x0, y0), (x1, y1), (x1, y0), (x0, y1)]
    gdf = gpd.GeoDataFrame({"name": ["field"]}, geometry=[Polygon(ring)], crs="EPSG:32631")
    path = tmp_path / "aoi.gpkg"
    gdf.to_crs(crs).to_file(path)
    return path


def test_aoi_in_another_crs(tmp_path, big_scene, checkpoint):
    full = geoddu.segment(big_scene, tmp_path / "full.tif", checkpoint)
    aoi = _aoi_file(tmp_path, (100, 150), (130, 170))
    part = geoddu.segment(big_scene, tmp_path / "aoi.tif", checkpoint, aoi=aoi)
    with rasterio.open(tmp_path / "full.tif") as a, rasterio.open(tmp_path / "aoi.tif") as b:
        whole, clipped = a.read(1), b.read(1)
        assert b.crs == a.crs and b.transform == a.transform
    area = gpd.read_file(aoi).to_crs("EPSG:32631").geometry
    inside = geometry_mask(area, out_shape=whole.shape, transform=TRANSFORM, invert=True)
    assert inside.sum() > 1000
    np.testing.assert_array_equal(clipped[inside], whole[inside])
    assert (clipped[~inside] == 255).all()
    # Work: the touched 32 px subimages (rows 3-4, cols 4-5 -> 2 x 2 = 4; the reprojected
    # polygon may graze one more row/column), plus a one-cell ring for the communication.
    assert part.subimages <= 9
    assert part.encoder_runs <= (3 + 2) * (3 + 2)
    # Exactly what the plan says, before anything ran.
    plan = plan_job(SegmentRequest(src=big_scene, output=tmp_path / "p.tif", model=checkpoint,
                                   aoi=aoi))
    assert (part.subimages, part.encoder_runs) == (len(plan.cells.decode), plan.encoder_runs)
    # The full scene, 8 x 10 subimages, in one pass: strips of 8 columns and 2 columns, the
    # first strip's right context column (8 cells) encoded twice.
    assert full.schedule == "one pass" and full.encoder_runs == 80 + 8


def test_aoi_errors(tmp_path, big_scene, checkpoint):
    far = gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (1, 0), (1, 1)])], crs="EPSG:4326")
    far.to_file(tmp_path / "far.gpkg")
    with pytest.raises(GeodduError, match="does not overlap"):
        geoddu.segment(big_scene, tmp_path / "o.tif", checkpoint, aoi=tmp_path / "far.gpkg")
    nocrs = gpd.GeoDataFrame(geometry=[Polygon([(0, 0), (1, 0), (1, 1)])])
    nocrs.to_file(tmp_path / "nocrs.shp")  # no .prj: no CRS
    with pytest.raises(GeodduError, match="no CRS"):
        geoddu.segment(big_scene, tmp_path / "o.tif", checkpoint, aoi=tmp_path / "nocrs.shp")
    aoi = _aoi_file(tmp_path, (10, 60), (10, 60))
    with pytest.raises(GeodduError, match="no features"):
        geoddu.segment(big_scene, tmp_path / "o.tif", checkpoint, aoi=aoi, aoi_where="name = 'x'")
    assert not (tmp_path / "o.tif").exists()


def test_invalid_aoi_is_repaired_with_a_warning(tmp_path, big_scene, checkpoint):
    aoi = _aoi_file(tmp_path, (40, 120), (40, 120), invalid=True)
    with pytest.warns(UserWarning, match="make_valid"):
        geoddu.segment(big_scene, tmp_path / "o.tif", checkpoint, aoi=aoi)
    with rasterio.open(tmp_path / "o.tif") as src:
        assert (src.read(1) != 255).any()
