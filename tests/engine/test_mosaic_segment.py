"""`--mosaic`: a scene cut into sheets, segmented as one scene, on real files and models."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from helpers import CRS, TRANSFORM, write_geotiff

import geoddu
from geoddu.engine.mosaic import plan_mosaic
from geoddu.engine.request import SegmentRequest
from geoddu.errors import Cancelled, GeodduError
from geoddu.io.mosaic import build_mosaic

GEODDU = [sys.executable, "-m", "geoddu.cli", "segment"]
# A 200 x 260 scene cut into 3 x 3 sheets of unequal sizes (none a multiple of the 32 px
# subimages, so every sheet segmented on its own is padded at its edges).
ROWS = (0, 70, 150, 200)
COLS = (0, 90, 170, 260)


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*GEODDU, *map(str, args), "-q"], capture_output=True, text=True,
                          timeout=300)


def _classes(path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def _grid(path) -> tuple:
    with rasterio.open(path) as ds:
        return ds.crs, ds.transform, ds.width, ds.height


def _leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".geoddu-tmp-" in p.name]


@pytest.fixture
def sheets(tmp_path):
    image = np.random.default_rng(5).integers(1, 255, (3, 200, 260), dtype=np.uint8)
    scene = write_geotiff(tmp_path / "scene.tif", image)
    folder = tmp_path / "sheets"
    folder.mkdir()
    windows = {}
    for i in range(3):
        for j in range(3):
            r0, r1, c0, c1 = ROWS[i], ROWS[i + 1], COLS[j], COLS[j + 1]
            path = write_geotiff(folder / f"sheet_{i}{j}.tif", image[:, r0:r1, c0:c1],
                                 transform=TRANSFORM * Affine.translation(c0, r0))
            windows[path] = (slice(r0, r1), slice(c0, c1))
    return image, scene, folder, windows


def test_mosaic_equals_the_uncut_scene_and_batch_does_not(tmp_path, sheets, checkpoint):
    _, scene, folder, windows = sheets
    geoddu.segment(scene, tmp_path / "whole.tif", checkpoint)
    whole = _classes(tmp_path / "whole.tif")

    r = _cli(folder, "--mosaic", "-o", tmp_path / "map.tif", "-m", checkpoint)
    assert r.returncode == 0, r.stderr
    different = int((_classes(tmp_path / "map.tif") != whole).sum())
    print(f"--mosaic -o: {different} pixels differ from the uncut scene")
    assert different == 0
    assert _grid(tmp_path / "map.tif") == _grid(scene)

    out = tmp_path / "out"
    out.mkdir()
    r = _cli(folder, "--mosaic", "--output-dir", out, "--cog", "-m", checkpoint)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.tif")) == sorted(p.name for p in windows)
    for sheet, window in windows.items():
        got = out / sheet.name
        assert _grid(got) == _grid(sheet)
        np.testing.assert_array_equal(_classes(got), whole[window])
        with rasterio.open(got) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"

    batch = tmp_path / "batch"
    batch.mkdir()
    r = _cli(folder, "--output-dir", batch, "-m", checkpoint)
    assert r.returncode == 0, r.stderr
    per_file = sum(int((_classes(batch / s.name) != whole[w]).sum())
                   for s, w in windows.items())
    print(f"per-file batch (no --mosaic): {per_file} of {whole.size} pixels differ from the "
          f"uncut scene")
    assert per_file > 0
    assert _leftovers(tmp_path) == []


def test_a_gap_is_nodata_and_an_overlap_follows_the_order(tmp_path, sheets, checkpoint):
    image, _, folder, windows = sheets
    centre = folder / "sheet_11.tif"
    others = [str(p) for p in windows if p != centre]
    result = geoddu.segment(others, tmp_path / "gap.tif", checkpoint, mosaic=True)
    assert (result.width, result.height) == (260, 200)
    got = _classes(tmp_path / "gap.tif")
    hole = np.zeros(got.shape, bool)
    hole[windows[centre]] = True
    assert (got[hole] == 255).all() and (got[~hole] != 255).all()
    plan = plan_mosaic(SegmentRequest(src=others, output=tmp_path / "p.tif",
                                      model=str(checkpoint), mosaic=True))
    assert (plan.scene.width, plan.scene.height) == (260, 200)

    # Two sheets overlapping by 40 columns, with different pixels there: the later one wins,
    # as in a scene composed that way.
    a = write_geotiff(tmp_path / "a.tif", image[:, :, :150])
    b_pixels = 255 - image[:, :, 110:]
    b = write_geotiff(tmp_path / "b.tif", b_pixels,
                      transform=TRANSFORM * Affine.translation(110, 0))
    composed = image.copy()
    composed[:, :, 110:] = b_pixels
    geoddu.segment(write_geotiff(tmp_path / "composed.tif", composed), tmp_path / "ref.tif",
                   checkpoint)
    geoddu.segment([a, b], tmp_path / "ab.tif", checkpoint, mosaic=True)
    np.testing.assert_array_equal(_classes(tmp_path / "ab.tif"), _classes(tmp_path / "ref.tif"))
    assert _leftovers(tmp_path) == []


def test_every_vrt_builder_gives_the_same_classes(tmp_path, sheets, checkpoint):
    """Our XML writer always, GDAL's builders where installed: the same segmentation, over
    all sheets (= the uncut scene) and over sheets with a gap and an overlap."""
    image, scene, folder, windows = sheets
    model = geoddu.load_model(checkpoint)  # loaded (and traced) once for the five runs
    geoddu.segment(scene, tmp_path / "whole.tif", model)
    extra = write_geotiff(tmp_path / "extra.tif", 255 - image[:, 40:120, 50:150],
                          transform=TRANSFORM * Affine.translation(50, 40))
    gap = [p for p in windows if p.name != "sheet_11.tif"] + [extra]
    builders = ["xml"]
    if shutil.which("gdalbuildvrt"):
        builders.append("gdalbuildvrt")
    if importlib.util.find_spec("osgeo") is not None:
        builders.append("osgeo")
    got: dict[str, list[np.ndarray]] = {}
    for builder in builders:
        for k, inputs in enumerate((list(windows), gap)):
            folder = tmp_path / f"{builder}{k}"
            folder.mkdir()
            vrt = build_mosaic([str(p) for p in inputs], folder, builder=builder).path
            geoddu.segment(vrt, folder / "classes.tif", model)
            got.setdefault(builder, []).append(_classes(folder / "classes.tif"))
    print(f"VRT builders compared: {', '.join(builders)}")
    np.testing.assert_array_equal(got["xml"][0], _classes(tmp_path / "whole.tif"))
    assert (got["xml"][1] == 255).any()  # the gap the extra sheet does not cover
    for builder in builders[1:]:
        for a, b in zip(got["xml"], got[builder], strict=True):
            np.testing.assert_array_equal(a, b)


def test_mixed_crs_is_refused_in_one_line_and_warped_with_target_crs(tmp_path, sheets,
                                                                    checkpoint):
    image, _, folder, windows = sheets
    odd = folder / "sheet_22.tif"
    with rasterio.open(odd) as ds:
        data, transform = ds.read(), ds.transform
    odd.unlink()
    # ETRS89 / UTM 31N: another CRS (refused as it is), in the same place (warped, no shift).
    write_geotiff(odd, data, transform=transform, crs="EPSG:3043")
    r = _cli(folder, "--mosaic", "-o", tmp_path / "map.tif", "-m", checkpoint)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --mosaic: the inputs differ in CRS")
    assert "sheet_22.tif (EPSG:3043)" in lines[0] and "sheet_00" not in lines[0]
    assert not (tmp_path / "map.tif").exists() and _leftovers(tmp_path) == []

    out = tmp_path / "out"
    out.mkdir()
    result = geoddu.segment(folder, None, checkpoint, mosaic=True, output_dir=out,
                            target_crs=CRS, resolution=20)
    assert sorted(p.name for p in result.extra_outputs) == sorted(p.name for p in windows)
    for path in result.extra_outputs:
        crs, transform, _, _ = _grid(path)
        assert crs.to_string() == CRS and transform.a == 20 and transform.c % 20 == 0
        assert (_classes(path) != 255).any()
    assert _leftovers(tmp_path) == []


def test_other_band_counts_and_resolutions_are_refused(tmp_path, sheets, checkpoint):
    image, _, folder, windows = sheets
    paths = [str(p) for p in windows]
    four = write_geotiff(tmp_path / "four.tif", np.concatenate([image[:, :70, :90]] * 2)[:4],
                         transform=TRANSFORM)
    coarse = write_geotiff(tmp_path / "coarse.tif", image[:, :70, :90],
                           transform=Affine(20, 0, TRANSFORM.c, 0, -20, TRANSFORM.f))
    for odd, says in ((four, "band count: four.tif (4 bands)"),
                      (coarse, "resolution: coarse.tif (20x20)")):
        with pytest.raises(GeodduError) as e:
            geoddu.segment([*paths[1:], odd], tmp_path / "x.tif", checkpoint, mosaic=True)
        assert says in str(e.value).replace(str(tmp_path) + "/", "") and "\n" not in str(e.value)
    assert not (tmp_path / "x.tif").exists() and _leftovers(tmp_path) == []


def test_the_request_travels_as_json_and_checks_its_outputs(tmp_path, sheets, checkpoint):
    _, _, folder, windows = sheets
    r = SegmentRequest(src=[folder], output_dir=tmp_path, model=str(checkpoint), mosaic=True,
                       target_crs="EPSG:32631", resolution=20.0)
    assert r.src == tuple(sorted(str(p) for p in windows))  # the folder, expanded
    assert SegmentRequest.from_json(r.to_json()) == r
    for bad, says in (({"mosaic": False}, "2 inputs"),
                      ({"output": tmp_path / "o.tif"}, "either -o/--output"),
                      ({"output_dir": None}, "either -o/--output"),
                      ({"probabilities": tmp_path / "p.tif"}, "needs -o with --mosaic")):
        fields = {"src": [*windows][:2], "output_dir": tmp_path, "model": str(checkpoint),
                  "mosaic": True, **bad}
        with pytest.raises(GeodduError, match=says):
            SegmentRequest(**fields)
    with pytest.raises(GeodduError, match="not --band-files"):
        SegmentRequest(band_files=["a.tif"], output="o.tif", model="m.pt", mosaic=True)
    # --mosaic --resume continues one map (tests/engine/test_resume.py), not per-input ones.
    with pytest.raises(GeodduError, match="give -o, not --output-dir"):
        SegmentRequest(src=["a.tif"], output_dir=".", model="m.pt", mosaic=True, resume=True)
    with pytest.raises(GeodduError, match="--target-crs goes with --mosaic"):
        SegmentRequest(src="a.tif", output="o.tif", model="m.pt", target_crs="EPSG:4326")


def test_a_cancelled_mosaic_leaves_nothing(tmp_path, sheets, checkpoint):
    """Stopped halfway: no output, no per-input map, no temporary folder or VRT."""
    _, _, folder, _ = sheets
    out = tmp_path / "out"
    out.mkdir()
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 5

    for target in ({"output_dir": out}, {"dst": tmp_path / "map.tif"}):
        calls.clear()
        with pytest.raises(Cancelled):
            geoddu.segment(folder, target.get("dst"), checkpoint, mosaic=True, cancel=cancel,
                           output_dir=target.get("output_dir"))
    assert list(out.iterdir()) == [] and not (tmp_path / "map.tif").exists()
    assert _leftovers(tmp_path) == []
