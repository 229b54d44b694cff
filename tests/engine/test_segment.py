"""The streaming engine writes exactly what the in-memory model predicts, on real files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
import torch
from helpers import CRS, TRANSFORM, make_checkpoint, write_geotiff

import geoddu
from geoddu.engine.planner import plan_job
from geoddu.engine.request import SegmentRequest
from geoddu.errors import Cancelled, GeodduError


def _read(path):
    with rasterio.open(path) as src:
        return src.read(1), src


def _reference(model_path, image, mask=None, precision="fp32"):
    model = geoddu.load_model(model_path, precision=precision)
    classes, logits = model.predict(image, mask, return_logits=True)
    return classes, torch.softmax(torch.from_numpy(logits), 0).numpy()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_streaming_equals_whole_scene_model(tmp_path, scene, checkpoint, precision):
    """Exact within each precision: a bf16 segment is the bf16 model on the whole scene."""
    with rasterio.open(scene) as src:
        image = src.read()
    ref_classes, ref_probs = _reference(checkpoint, image, precision=precision)
    if precision == "bf16":  # the bf16 model really computes in bf16
        assert np.abs(_reference(checkpoint, image)[1] - ref_probs).max() > 1e-3
    # Two passes with a tiny map store budget and tiles: the disk store and the halo'd
    # communication tiles run.
    result = geoddu.segment(
        scene,
        tmp_path / "out.tif",
        checkpoint,
        probabilities=tmp_path / "p.tif",
        confidence=tmp_path / "c.tif",
        store_max_ram_bytes=0,
        comm_tile_cells=16,
        schedule="two-pass",
        precision=precision,
    )
    assert result.communicated and result.map_store_on_disk
    assert result.subimages == 5 * 7 and result.encoder_runs == 2 * 35
    out, src = _read(tmp_path / "out.tif")
    assert src.crs.to_string() == CRS and src.transform == TRANSFORM
    assert (src.width, src.height, src.dtypes[0], src.nodata) == (205, 150, "uint8", 255)
    np.testing.assert_array_equal(out, ref_classes)
    with rasterio.open(tmp_path / "p.tif") as p:
        probs = p.read()
    assert np.abs(probs - ref_probs).max() <= 1e-4
    with rasterio.open(tmp_path / "c.tif") as c:
        np.testing.assert_allclose(c.read(1), ref_probs.max(0), atol=1e-4)


@pytest.mark.parametrize(
    "options",
    [
        {},  # one strip as wide as the grid (7 columns)
        {"strip_cells": 3},  # strips of 3, 3 and 1 columns: left context handed over
        {"strip_cells": 1},  # every column a strip
        {"strip_cells": 2, "device": "cpu,cpu,cpu"},  # strips over three devices
        {"skip_budget_bytes": 1},  # no strip fits: two passes
        {"strip_cells": 3, "precision": "bf16"},  # exact within bf16 too
        {"skip_budget_bytes": 1, "precision": "bf16"},
    ],
)
def test_one_pass_equals_the_whole_scene_model(tmp_path, checkpoint, options):
    """Each subimage encoded once, its row decoded as soon as the halo below is encoded:
    the same classes and probabilities as the model on the whole scene, nodata included."""
    rng = np.random.default_rng(1)
    image = rng.integers(1, 255, (3, 150, 205), dtype=np.uint8)
    image[:, 32:64, 64:96] = 0  # one subimage all nodata: zeros in the mosaic, 255 out
    image[:, 100:150, 0:40] = 0  # nodata across subimage borders
    scene = write_geotiff(tmp_path / "nd.tif", image, nodata=0)
    with rasterio.open(scene) as src:
        ok = src.dataset_mask() > 0
        ref_classes, ref_probs = _reference(checkpoint, src.read(), ok,
                                            options.get("precision", "fp32"))
    result = geoddu.segment(
        scene, tmp_path / "out.tif", checkpoint, probabilities=tmp_path / "p.tif", **options
    )
    expected = "two passes" if options.get("skip_budget_bytes") else "one pass"
    assert result.schedule == expected and f"in {expected}" in result.summary()
    if expected == "one pass":
        # Columns re-encoded as right context: one per strip boundary on the same device.
        strips = -(-7 // options.get("strip_cells", 8))
        assert result.encoder_runs <= 35 - 1 + 5 * (strips - 1) * (
            2 if "device" in options else 1
        )
    # Exactly the planned encoder runs, less every planned read of an all-nodata subimage
    # (read, found empty, not encoded).
    plan = plan_job(SegmentRequest(src=scene, output=tmp_path / "o.tif", model=checkpoint,
                                   **options))
    blank = {c.index for c in plan.cells.encode
             if not ok[c.row_off : c.row_off + c.height, c.col_off : c.col_off + c.width].any()}
    assert blank == {(1, 2), (4, 0)} and result.skipped == 2
    empty_reads = sum(c.index in blank for w in plan.work for c in w.reads)
    assert result.encoder_runs == plan.encoder_runs - empty_reads
    np.testing.assert_array_equal(_read(tmp_path / "out.tif")[0], ref_classes)
    with rasterio.open(tmp_path / "p.tif") as p:
        probs = p.read()
    assert np.isnan(probs[:, ~ok]).all() and (ref_classes[~ok] == 255).all()
    assert np.abs(probs[:, ok] - ref_probs[:, ok]).max() <= 1e-4


def test_several_devices_give_the_same_map(tmp_path, scene, checkpoint):
    geoddu.segment(scene, tmp_path / "one.tif", checkpoint)
    result = geoddu.segment(scene, tmp_path / "three.tif", checkpoint, device="cpu,cpu,cpu")
    assert result.devices == ["cpu", "cpu", "cpu"]
    np.testing.assert_array_equal(_read(tmp_path / "one.tif")[0], _read(tmp_path / "three.tif")[0])


def test_communication_reaches_across_the_scene(tmp_path, scene):
    """Changing one subimage changes the others' outputs only with communication."""
    with rasterio.open(scene) as src:
        image = src.read()
    changed = image.copy()
    changed[:, :32, :32] = 255 - changed[:, :32, :32]
    other = write_geotiff(tmp_path / "changed.tif", changed)
    for name, communicates in (("DDU-Net(2,4,Y)", True), ("DDU-Net(2,4,N)", False)):
        ckpt = make_checkpoint(tmp_path / f"{name}.pt", name)
        probs = []
        for k, src in enumerate((scene, other)):
            result = geoddu.segment(
                src,
                tmp_path / f"{k}{communicates}.tif",
                ckpt,
                probabilities=tmp_path / f"p{k}{communicates}.tif",
            )
            assert result.communicated is communicates
            with rasterio.open(tmp_path / f"p{k}{communicates}.tif") as p:
                probs.append(p.read())
        neighbour = (slice(None), slice(32, 64), slice(32, 64))  # the diagonal neighbour
        moved = np.abs(probs[0][neighbour] - probs[1][neighbour]).max()
        assert (moved > 1e-4) if communicates else (moved == 0)


def test_no_communication_runs_one_pass_and_matches_predict(tmp_path, scene):
    ckpt = make_checkpoint(tmp_path / "n.pt", "DDU-Net(2,4,N)")
    result = geoddu.segment(scene, tmp_path / "n.tif", ckpt)
    assert not result.communicated
    assert result.encoder_runs == result.subimages  # a single pass
    with rasterio.open(scene) as src:
        ref, _ = _reference(ckpt, src.read())
    np.testing.assert_array_equal(_read(tmp_path / "n.tif")[0], ref)


def test_nodata_stays_nodata_and_empty_subimages_are_skipped(tmp_path, checkpoint):
    rng = np.random.default_rng(1)
    data = rng.integers(1, 255, (3, 96, 128), dtype=np.uint8)
    data[:, :32, :64] = 0  # two whole subimages of nodata
    data[:, 50:60, 70:90] = 0  # a hole inside valid subimages
    scene = write_geotiff(tmp_path / "holes.tif", data, nodata=0)
    result = geoddu.segment(scene, tmp_path / "o.tif", checkpoint)
    assert result.skipped == 2
    out, _ = _read(tmp_path / "o.tif")
    with rasterio.open(scene) as src:
        mask = src.dataset_mask() > 0
    ref, _ = _reference(checkpoint, data, mask)
    np.testing.assert_array_equal(out, ref)
    assert (out[~mask] == 255).all() and (out[mask] != 255).all()


def test_plain_tiff_without_georeferencing_and_band_selection(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 65535, (2, 100, 70), dtype=np.uint16)
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, data, tile=(32, 32), photometric="minisblack", planarconfig="separate")
    ckpt = make_checkpoint(tmp_path / "one.pt", in_channels=1)
    geoddu.segment(path, tmp_path / "o.tif", ckpt, bands=[2])
    out, src = _read(tmp_path / "o.tif")
    assert src.crs is None and out.shape == (100, 70)
    ref, _ = _reference(ckpt, data[1:].astype(np.float32))
    np.testing.assert_array_equal(out, ref)


def test_cancel_leaves_no_output(tmp_path, scene, checkpoint):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        geoddu.segment(
            scene, tmp_path / "o.tif", checkpoint, cancel=cancel, probabilities=tmp_path / "p.tif"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "scene.tif"]


def test_one_device_computes_in_the_calling_thread(tmp_path, scene, checkpoint):
    # A second computing thread beside the one that loaded the model makes libgomp throttle
    # its workers' spin: the small model ran 1.5x slower (docs/precision.md). Several devices
    # still get a thread each.
    import threading

    model = geoddu.load_model(checkpoint)
    threads = set()
    model.net.encoder.register_forward_hook(lambda *_: threads.add(threading.get_ident()))
    geoddu.segment(scene, tmp_path / "o.tif", model)
    assert threads == {threading.get_ident()}
    threads.clear()
    geoddu.segment(scene, tmp_path / "two.tif", model, device="cpu,cpu")
    assert len(threads) == 2 and threading.get_ident() not in threads


def test_progress_reports_every_stage(tmp_path, scene, checkpoint):
    seen = []
    geoddu.segment(
        scene,
        tmp_path / "o.tif",
        checkpoint,
        progress=lambda stage, done, total: seen.append((stage, done, total)),
    )
    stages = [s for s, _, _ in seen]
    assert stages[0] == "encode" and "communicate" in stages and stages[-1] == "decode"
    assert seen[-1] == ("decode", 35, 35)
    # Every item of every stage reported once, in order, against the planned total (one pass,
    # one strip of 7 columns: 5 rows communicated).
    totals = {"encode": 35, "communicate": 5, "decode": 35}
    for stage, total in totals.items():
        assert [(d, t) for s, d, t in seen if s == stage] == [(d, total) for d in
                                                              range(1, total + 1)]


def test_output_rules(tmp_path, scene, checkpoint):
    out = tmp_path / "o.tif"
    geoddu.segment(scene, out, checkpoint, cog=True)
    with rasterio.open(out) as src:
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.colormap(1)[1][:3] == (230, 159, 0)
    with pytest.raises(GeodduError, match="overwrite"):
        geoddu.segment(scene, out, checkpoint)
    geoddu.segment(scene, out, checkpoint, overwrite=True)
    with pytest.raises(GeodduError, match="does not exist"):
        geoddu.segment(scene, tmp_path / "missing" / "o.tif", checkpoint)


def test_bad_inputs_are_one_line_errors(tmp_path, scene, checkpoint):
    with pytest.raises(GeodduError, match="band"):
        geoddu.segment(
            scene, tmp_path / "o.tif", make_checkpoint(tmp_path / "4b.pt", in_channels=4)
        )
    with pytest.raises(GeodduError, match="multiple of the model stride"):
        geoddu.segment(scene, tmp_path / "o.tif", checkpoint, subimage_size=30)
    with pytest.raises(GeodduError, match="CUDA"):
        geoddu.segment(scene, tmp_path / "o.tif", checkpoint, gpus=2)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(GeodduError, match="checkpoint"):
        geoddu.segment(scene, tmp_path / "o.tif", bad)
    assert not (tmp_path / "o.tif").exists()


def test_vector_output_in_one_go(tmp_path, scene, checkpoint):
    import geopandas as gpd

    result = geoddu.segment(scene, tmp_path / "o.tif", checkpoint, vector=tmp_path / "o.gpkg")
    assert tmp_path / "o.gpkg" in result.extra_outputs
    out, src = _read(tmp_path / "o.tif")
    polys = gpd.read_file(tmp_path / "o.gpkg")
    assert polys.crs == src.crs
    for k in np.unique(out):
        area = polys[polys.class_id == k].area.sum()
        assert area == pytest.approx((out == k).sum() * 100.0)  # 10 m pixels
    with pytest.raises(GeodduError, match="unknown vector format"):
        geoddu.segment(scene, tmp_path / "p.tif", checkpoint, vector=tmp_path / "o.xyz")
    assert not (tmp_path / "p.tif").exists()


def _rgb_with_partial_nodata(path, nodata):
    """8-bit RGB whose real pixels often equal nodata in one or two bands, plus real holes."""
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (3, 96, 128), dtype=np.uint8)
    data[rng.random(data.shape) < 0.3] = nodata
    data[:, (data == nodata).all(axis=0)] = 7
    data[:, 0, 0] = (0, 5, 5) if nodata == 0 else (255, 254, 251)
    data[:, :32, 64:96] = nodata  # a whole subimage of nodata
    data[:, 50:55, 10:20] = nodata  # a hole inside valid subimages
    return write_geotiff(path, data, nodata=nodata), data


@pytest.mark.parametrize("nodata", [0, 255])
def test_nodata_is_gdals_dataset_mask(tmp_path, checkpoint, nodata):
    scene, data = _rgb_with_partial_nodata(tmp_path / "rgb.tif", nodata)
    with rasterio.open(scene) as src:
        mask = src.dataset_mask() != 0
    assert mask[0, 0] and not mask.all()
    assert (mask & (data == nodata).any(axis=0)).sum() > 1000  # the old any-band rule's holes
    result = geoddu.segment(scene, tmp_path / "o.tif", checkpoint)
    assert result.skipped == 1
    out, _ = _read(tmp_path / "o.tif")
    np.testing.assert_array_equal(out == 255, ~mask)
    ref, _ = _reference(checkpoint, data, mask)
    np.testing.assert_array_equal(out[mask], ref[mask])


def _rgbn(path):
    rng = np.random.default_rng(5)
    data = rng.integers(1, 255, (4, 64, 96), dtype=np.uint8)
    write_geotiff(path, data, photometric="RGB")
    with rasterio.open(path, "r+") as dst:
        dst.set_band_description(4, "nir")
    return path, data


def test_more_bands_than_the_model_takes_are_refused(tmp_path, checkpoint):
    scene, data = _rgbn(tmp_path / "rgbn.tif")
    out = tmp_path / "o.tif"
    with pytest.raises(GeodduError) as err:
        geoddu.segment(scene, out, checkpoint)
    msg = str(err.value)
    assert "\n" not in msg and not out.exists()
    assert "has 4 bands (red, green, blue, nir) but the model takes 3" in msg
    assert "--bands 1,2,3" in msg and "QGIS" in msg
    geoddu.segment(scene, out, checkpoint, bands=[1, 2, 3])
    ref, _ = _reference(checkpoint, data[:3])
    np.testing.assert_array_equal(_read(out)[0], ref)


def test_an_alpha_band_is_the_mask_not_an_extra_band(tmp_path, checkpoint):
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (3, 64, 96), dtype=np.uint8)
    alpha = np.full((1, 64, 96), 255, np.uint8)
    alpha[0, 10:20, 30:50] = 0
    scene = write_geotiff(
        tmp_path / "rgba.tif", np.concatenate([rgb, alpha]), photometric="RGB", alpha="YES"
    )
    geoddu.segment(scene, tmp_path / "o.tif", checkpoint)
    out, _ = _read(tmp_path / "o.tif")
    valid = alpha[0] != 0
    np.testing.assert_array_equal(out == 255, ~valid)
    ref, _ = _reference(checkpoint, rgb, valid)
    np.testing.assert_array_equal(out, ref)


def test_more_bands_via_the_cli_is_a_one_line_error(tmp_path, checkpoint):
    scene, _ = _rgbn(tmp_path / "scene.tif")
    exe = Path(sys.executable).with_name("geoddu")
    out = tmp_path / "out.tif"
    proc = subprocess.run(
        [str(exe), "segment", str(scene), "-o", str(out), "-m", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "--bands" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


def test_uint8_probabilities_match_float32_and_are_smaller(tmp_path, checkpoint):
    """--probabilities-dtype uint8 (through the CLI) against float32 (the API), same run."""
    import xml.etree.ElementTree as ET

    scene, _ = _rgb_with_partial_nodata(tmp_path / "rgb.tif", 0)
    geoddu.segment(scene, tmp_path / "f.tif", checkpoint,
                   probabilities=tmp_path / "pf.tif", confidence=tmp_path / "cf.tif")
    exe = Path(sys.executable).with_name("geoddu")
    proc = subprocess.run(
        [str(exe), "segment", str(scene), "-o", str(tmp_path / "u.tif"), "-m", str(checkpoint),
         "--probabilities", str(tmp_path / "pu.tif"), "--confidence", str(tmp_path / "cu.tif"),
         "--probabilities-dtype", "uint8", "--quiet"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for floats, bytes_ in (("pf.tif", "pu.tif"), ("cf.tif", "cu.tif")):
        with rasterio.open(tmp_path / floats) as f, rasterio.open(tmp_path / bytes_) as u:
            expected, got = f.read(), u.read()
            assert u.dtypes[0] == "uint8" and u.nodata == 255
            assert u.scales == (1 / 254,) * u.count and u.offsets == (0.0,) * u.count
            assert u.descriptions == f.descriptions
        nan = np.isnan(expected)
        assert nan.any() and (got[nan] == 255).all() and (got[~nan] <= 254).all()
        assert np.abs(got[~nan] * u.scales[0] - expected[~nan]).max() <= 0.5 / 254 + 1e-6
        assert (tmp_path / bytes_).stat().st_size < (tmp_path / floats).stat().st_size
    # Both class maps are the same and carry GDAL's category names in their PAM sidecar.
    np.testing.assert_array_equal(_read(tmp_path / "u.tif")[0], _read(tmp_path / "f.tif")[0])
    model = geoddu.load_model(checkpoint)
    names = [c["name"] for c in model.classes]
    for out in ("f.tif", "u.tif"):
        band = ET.parse(tmp_path / f"{out}.aux.xml").getroot().find("PAMRasterBand")
        assert [c.text for c in band.find("CategoryNames")] == names
        assert len(band.find("GDALRasterAttributeTable").findall("Row")) == len(names)
        with rasterio.open(tmp_path / out) as src:
            assert str(tmp_path / f"{out}.aux.xml") in src.files
    assert sorted(p.name for p in tmp_path.glob("*.aux.xml")) == ["f.tif.aux.xml", "u.tif.aux.xml"]
    assert not [p for p in tmp_path.iterdir() if "geoddu-tmp" in p.name]


def test_probabilities_dtype_is_checked(tmp_path, scene, checkpoint):
    with pytest.raises(GeodduError, match="probabilities-dtype"):
        geoddu.segment(scene, tmp_path / "o.tif", checkpoint, probabilities_dtype="float16")
    assert not (tmp_path / "o.tif").exists()
