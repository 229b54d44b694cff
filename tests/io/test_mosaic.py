"""Many GeoTIFFs as one virtual scene (geoddu.io.mosaic): the VRT every builder writes, its
gaps, overlaps and masks as GDAL reads them, and the inputs it refuses."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import rasterio
from helpers import write_geotiff
from rasterio.transform import from_origin

from geoddu.errors import GeodduError
from geoddu.io.mosaic import build_mosaic

X0, Y0, RES = 500000, 4000000, 10
HAVE_GDALBUILDVRT = shutil.which("gdalbuildvrt") is not None
try:
    from osgeo import gdal  # noqa: F401

    HAVE_OSGEO = True
except ImportError:
    HAVE_OSGEO = False
BUILDERS = [
    "xml",
    pytest.param("gdalbuildvrt", marks=pytest.mark.skipif(
        not HAVE_GDALBUILDVRT, reason="gdalbuildvrt is not on PATH")),
    pytest.param("osgeo", marks=pytest.mark.skipif(
        not HAVE_OSGEO, reason="osgeo.gdal is not installed")),
]


def tile(path, data, row, col, res=RES, **kw):
    """A sheet whose top-left pixel is (row, col) of the common 10 m grid."""
    transform = from_origin(X0 + col * RES, Y0 - row * RES, res, res)
    return str(write_geotiff(path, data, transform=transform, **kw))


def read_vrt(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.dataset_mask() > 0, ds.transform, (ds.height, ds.width)


def _image(seed, shape=(3, 40, 50), low=1):
    return np.random.default_rng(seed).integers(low, 255, shape, dtype=np.uint8)


@pytest.mark.parametrize("builder", BUILDERS)
def test_gaps_are_invalid_and_tiles_valid(tmp_path, builder):
    """Files without nodata: a VRT alone gives 0 in the gap and GDAL calls it valid; the
    mosaic's mask band makes the gap invalid and keeps each file's own mask."""
    a = tile(tmp_path / "a.tif", _image(0), 0, 0)
    b = tile(tmp_path / "b.tif", _image(1), 10, 60)  # a 10 px gap to the right of a
    # c has an internal mask: its top 5 rows are masked.
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
        c = tile(tmp_path / "c.tif", _image(2), 45, 0)
        with rasterio.open(c, "r+") as ds:
            m = np.full((40, 50), 255, np.uint8)
            m[:5] = 0
            ds.write_mask(m)
    mosaic = build_mosaic([a, b, c], tmp_path, builder=builder)
    assert mosaic.builder == builder
    data, valid, transform, shape = read_vrt(mosaic.path)
    assert shape == (85, 110) and transform == from_origin(X0, Y0, RES, RES)
    expected = np.zeros((85, 110), bool)
    expected[0:40, 0:50] = True
    expected[10:50, 60:110] = True
    expected[50:85, 0:50] = True  # c without its 5 masked rows
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(data[:, 10:50, 60:110], _image(1))
    assert [(m.row_off, m.col_off) for m in mosaic.members] == [(0, 0), (10, 60), (45, 0)]


@pytest.mark.parametrize("builder", BUILDERS)
def test_nodata_inputs_keep_their_rule_and_gaps_are_nodata(tmp_path, builder):
    """One nodata value: the VRT carries it; a gap is nodata in every band, and a pixel is
    nodata only where all its bands are (0, 5, 5 under nodata 0 stays data)."""
    img = _image(3)
    img[:, 0, 0] = 0
    img[:, 0, 1] = (0, 5, 5)
    a = tile(tmp_path / "a.tif", img, 0, 0, nodata=0)
    b = tile(tmp_path / "b.tif", _image(4), 0, 70, nodata=0)
    _, valid, _, shape = read_vrt(build_mosaic([a, b], tmp_path, builder=builder).path)
    assert shape == (40, 120)
    assert not valid[0, 0] and valid[0, 1] and not valid[:, 50:70].any()
    assert valid[:, 70:].all() and valid.sum() == 2 * 40 * 50 - 1


@pytest.mark.parametrize("builder", BUILDERS)
def test_overlaps_follow_the_input_order(tmp_path, builder):
    """GDAL draws sources in order: the later input wins where they overlap; where it is
    masked or nodata, the earlier shows through."""
    a = tile(tmp_path / "a.tif", np.full((1, 40, 50), 10, np.uint8), 0, 0)
    b = tile(tmp_path / "b.tif", np.full((1, 40, 50), 20, np.uint8), 0, 30)
    ab = read_vrt(build_mosaic([a, b], fresh(tmp_path, "ab"), builder=builder).path)[0][0]
    ba = read_vrt(build_mosaic([b, a], fresh(tmp_path, "ba"), builder=builder).path)[0][0]
    assert ab.shape == (40, 80)
    assert (ab[:, :30] == 10).all() and (ab[:, 30:] == 20).all()  # b, the later, on top
    assert (ba[:, :50] == 10).all() and (ba[:, 50:] == 20).all()  # a, the later, on top
    # With nodata: the later input's nodata pixels let the earlier one through.
    hole = np.full((1, 40, 50), 20, np.uint8)
    hole[0, :, :10] = 0
    c = tile(tmp_path / "c.tif", np.full((1, 40, 50), 10, np.uint8), 0, 0, nodata=0)
    d = tile(tmp_path / "d.tif", hole, 0, 30, nodata=0)
    cd, valid, _, _ = read_vrt(build_mosaic([c, d], fresh(tmp_path, "cd"), builder=builder).path)
    assert (cd[0, :, 30:40] == 10).all() and (cd[0, :, 40:] == 20).all() and valid.all()


def fresh(tmp_path, name):
    path = tmp_path / name
    path.mkdir()
    return path


@pytest.mark.skipif(not HAVE_GDALBUILDVRT, reason="gdalbuildvrt is not on PATH")
def test_our_xml_reads_as_gdalbuildvrt_plus_mask(tmp_path):
    """Our XML and gdalbuildvrt's VRT give the same pixels and the same dataset mask over a
    3x3 grid of unequal sheets with a gap and an overlap."""
    cuts_r, cuts_c = (0, 30, 70, 90), (0, 45, 80, 120)
    paths = []
    for i in range(3):
        for j in range(3):
            if (i, j) == (1, 1):
                continue  # a gap
            h, w = cuts_r[i + 1] - cuts_r[i], cuts_c[j + 1] - cuts_c[j] + (5 if j < 2 else 0)
            paths.append(tile(tmp_path / f"t{i}{j}.tif", _image(10 * i + j, (2, h, w)),
                              cuts_r[i], cuts_c[j]))
    out = []
    for builder in ("xml", "gdalbuildvrt"):
        (tmp_path / builder).mkdir()
        out.append(read_vrt(build_mosaic(paths, tmp_path / builder, builder=builder).path))
    (d1, v1, t1, s1), (d2, v2, t2, s2) = out
    assert s1 == s2 == (90, 120) and t1 == t2
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(v1, v2)
    assert not v1[30:70, 50:80].any() and v1[:30].all()


def _one_line_refusal(exc_info, *needles):
    text = str(exc_info.value)
    assert "\n" not in text
    for needle in needles:
        assert needle in text, text
    return text


def test_mixed_crs_resolution_bands_and_grids_are_refused_naming_the_odd_one(tmp_path):
    a = tile(tmp_path / "a.tif", _image(0), 0, 0)
    b = tile(tmp_path / "b.tif", _image(1), 0, 50)
    c = tile(tmp_path / "c.tif", _image(2), 40, 0)
    odd_crs = tile(tmp_path / "utm32.tif", _image(3), 40, 50, crs="EPSG:32632")
    with pytest.raises(GeodduError) as e:
        build_mosaic([a, b, c, odd_crs], tmp_path)
    text = _one_line_refusal(e, "CRS", "utm32.tif (EPSG:32632)", "EPSG:32631", "--target-crs")
    assert "a.tif" not in text
    odd_res = tile(tmp_path / "coarse.tif", _image(4), 40, 50, res=20)
    with pytest.raises(GeodduError) as e:
        build_mosaic([a, b, c, odd_res], tmp_path)
    _one_line_refusal(e, "resolution", "coarse.tif (20x20)", "10x10")
    odd_bands = tile(tmp_path / "four.tif", _image(5, (4, 40, 50)), 40, 50)
    with pytest.raises(GeodduError) as e:
        build_mosaic([a, odd_bands, b, c], tmp_path)
    _one_line_refusal(e, "band count", "four.tif (4 bands)", "3 bands")
    shifted = str(write_geotiff(tmp_path / "shifted.tif", _image(6),
                                transform=from_origin(X0 + 503, Y0, RES, RES)))
    with pytest.raises(GeodduError) as e:
        build_mosaic([a, b, shifted], tmp_path)
    _one_line_refusal(e, "pixel grid", "shifted.tif")
    other_nodata = tile(tmp_path / "nd.tif", _image(7), 40, 50, nodata=0)
    with pytest.raises(GeodduError) as e:
        build_mosaic([a, b, c, other_nodata], tmp_path)
    _one_line_refusal(e, "nodata", "nd.tif (nodata 0.0)")


def test_warping_puts_every_input_on_one_grid(tmp_path):
    """--target-crs / --resolution: each input warped (nearest) on multiples of R; the gap
    and the warped inputs' outside stay invalid."""
    a = tile(tmp_path / "a.tif", _image(0), 0, 0)
    # ETRS89 / UTM 31N: another CRS than a's, in the same place.
    b = tile(tmp_path / "b.tif", _image(1), 0, 60, crs="EPSG:3043")
    with pytest.raises(GeodduError, match="CRS"):
        build_mosaic([a, b], tmp_path, resolution=20)
    mosaic = build_mosaic([a, b], tmp_path, target_crs="EPSG:32631", resolution=20)
    assert mosaic.warped and mosaic.crs.to_epsg() == 32631
    for m in mosaic.members:
        assert m.transform.a == 20 and m.transform.c % 20 == 0 and m.transform.f % 20 == 0
        assert m.crs.to_epsg() == 32631
    data, valid, transform, _ = read_vrt(mosaic.path)
    assert transform.a == 20 and data.shape[0] == 3
    first = mosaic.members[0]
    assert (first.width, first.height) == (25, 20)
    # a's origin is a multiple of 20: each 20 m pixel is one of the four 10 m pixels it covers.
    window = (slice(first.row_off, first.row_off + 20), slice(first.col_off, first.col_off + 25))
    blocks = _image(0).reshape(3, 20, 2, 25, 2)
    assert (blocks == data[(slice(None), *window)][:, :, None, :, None]).any(axis=(2, 4)).all()
    assert valid[window].all() and 0 < valid.mean() < 1
