"""What a model was trained on (the checkpoint's "data" record) and the warning segment gives
when a scene is unlike it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from helpers import make_checkpoint, write_geotiff

from geoddu.checkpoint import load_checkpoint, save_checkpoint
from geoddu.checkpoint_metadata import build_metadata
from geoddu.data import open_dataset
from geoddu.data.synthetic import write
from geoddu.engine.scene_check import SceneFacts, scene_differences
from geoddu.errors import GeodduError, GeodduWarning
from geoddu.models import create_model

U8_10M = {"pixel_size": [10.0, 10.0], "units": "metre", "dtype": "uint8",
          "value_range": [[0.0, 255.0]] * 3, "value_range_from": "dtype"}
WARN_U16 = ("is uint16 but the model was trained on uint8 data; check --bands and the "
            "normalisation")


def _model_with(path: Path, data, in_channels: int = 3) -> Path:
    torch.manual_seed(0)
    model = create_model("DDU-Net(2,4,Y)", in_channels=in_channels, num_classes=3,
                         base_channels=4)
    save_checkpoint(path, model, build_metadata(model.config, subimage_size=32, data=data))
    return path


# -- the comparison ---------------------------------------------------------------------------
def test_a_scene_like_the_training_data_gives_no_message():
    assert scene_differences(U8_10M, SceneFacts("s.tif", "uint8", [10.0, 10.0], "metre")) is None
    # Signedness and float width are the same family; 1.5x or less is not "a lot".
    assert scene_differences({**U8_10M, "dtype": "uint16"}, SceneFacts("s.tif", "int16")) is None
    assert scene_differences({**U8_10M, "dtype": "float32"}, SceneFacts("s", "float64")) is None
    assert scene_differences(U8_10M, SceneFacts("s", "uint8", [14.9, 6.8], "metre")) is None
    # Nothing to compare with: old checkpoints, unknown pixel sizes.
    assert scene_differences(None, SceneFacts("s", "uint16")) is None
    assert scene_differences({**U8_10M, "pixel_size": None}, SceneFacts("s", "uint8", [1, 1]))\
        is None


def test_differences_are_one_line():
    assert scene_differences(U8_10M, SceneFacts("scene.tif", "uint16", [10, 10], "metre")) == \
        f"scene.tif {WARN_U16}"
    assert scene_differences(U8_10M, SceneFacts("s.tif", "uint8", [0.5, 0.5], "metre")) == (
        "s.tif has 0.5 m pixels but the model was trained on 10 m pixels (20x smaller); pass "
        "--resample to read it at the model's pixel size, or use a model trained at its pixel "
        "size")
    both = scene_differences(U8_10M, SceneFacts("s.tif", "float32", [20, 20], None))
    assert both == ("s.tif is float32 but the model was trained on uint8 data, and it has 20 m "
                    "pixels but the model was trained on 10 m pixels (2x larger); check --bands "
                    "and the normalisation, and pass --resample to read it at the model's pixel "
                    "size, or use a model trained at its pixel size")
    # Metres against degrees: said, not compared.
    assert scene_differences(U8_10M, SceneFacts("s", "uint8", [1e-4, 1e-4], "degree")) == (
        "s has pixels in degrees but the model was trained on pixels in metres, so their "
        "sizes cannot be compared; reproject the scene to a CRS in metres (gdalwarp -t_srs)")
    measured = {**U8_10M, "dtype": "uint16", "value_range": [[0, 3000], [0, 3000], [10, 20]],
                "value_range_from": "sample"}
    inside = SceneFacts("s", "uint16", value_range=[[0, 5000], [5, 4000], [2, 28]])
    assert scene_differences(measured, inside) is None
    far = SceneFacts("s", "uint16", value_range=[[0, 5000], [5, 4000], [0, 60000]])
    assert scene_differences(measured, far) == (
        "s has values 0 to 60000 in band 3 but the model was trained on 10 to 20; check --bands "
        "and the normalisation")
    # A data type's range measured nothing: no value comparison.
    assert scene_differences({**measured, "value_range_from": "dtype"}, far) is None


# -- the checkpoint record --------------------------------------------------------------------
def test_the_data_record_is_optional_and_checked(tmp_path):
    ckpt = load_checkpoint(_model_with(tmp_path / "m.pt", U8_10M))
    assert ckpt["data"] == U8_10M
    assert "data" not in load_checkpoint(make_checkpoint(tmp_path / "old.pt"))
    assert "data" not in load_checkpoint(_model_with(tmp_path / "none.pt", None))
    plain = {"pixel_size": None, "dtype": "uint8", "value_range": None}
    assert load_checkpoint(_model_with(tmp_path / "p.pt", plain))["data"]["pixel_size"] is None
    bad = {
        "data.pixel_size": {**U8_10M, "pixel_size": [10, 0]},
        "data.dtype": {**U8_10M, "dtype": "rgb"},
        "data.value_range": {**U8_10M, "value_range": [[0, 255]]},
        "data.value_range[1]": {**U8_10M, "value_range": [[0, 1], [5, 2], [0, 1]]},
        "data.value_range_from": {**U8_10M, "value_range_from": "guess"},
        "data.units": {**U8_10M, "units": 3},
    }
    for field, data in bad.items():
        with pytest.raises(GeodduError, match="^" + re.escape(field) + ": "):
            _model_with(tmp_path / "bad.pt", data)
    # A file holding a bad record is one error naming the file and the field.
    raw = torch.load(tmp_path / "m.pt", weights_only=True)
    raw["data"] = "uint8"
    torch.save(raw, tmp_path / "damaged.pt")
    with pytest.raises(GeodduError, match=r"damaged\.pt: data: must be"):
        load_checkpoint(tmp_path / "damaged.pt")


def test_datasets_record_what_their_pixels_are(tmp_path):
    syn = open_dataset("synthetic", write(tmp_path / "k2", 2, train=4, val=2, test=2), "train")
    assert syn.data_description() == {"pixel_size": None, "units": None, "dtype": "uint8",
                                      "value_range": [[0.0, 255.0]], "value_range_from": "all"}
    root = tmp_path / "mine"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for name in "ab":
        write_geotiff(root / "images" / f"{name}.tif", rng.integers(100, 900, (2, 64, 64))
                      .astype(np.uint16))
        write_geotiff(root / "labels" / f"{name}.tif", rng.integers(0, 2, (1, 64, 64))
                      .astype(np.uint8))
    (root / "classes.json").write_text(json.dumps(["background", "thing"]))
    data = open_dataset("folder", root, "train", patch_size=32).data_description()
    assert data["pixel_size"] == [10.0, 10.0] and data["units"] == "metre"
    assert data["dtype"] == "uint16" and data["value_range_from"] == "sample"
    assert all(100 <= lo <= hi < 900 for lo, hi in data["value_range"])


def test_training_stores_the_record(tmp_path):
    from geoddu.train import preset, start_training

    data = write(tmp_path / "k2", 2, train=4, val=2, test=2)
    result = start_training("synthetic", data, tmp_path / "run", preset("synthetic", epochs=1),
                            arch="DDU-Net(2,8,Y)", model_options={"base_channels": 4})
    assert load_checkpoint(result.best)["data"] == {
        "pixel_size": None, "units": None, "dtype": "uint8", "value_range": [[0.0, 255.0]],
        "value_range_from": "all"}


# -- segment ----------------------------------------------------------------------------------
def _segment(scene: Path, model: Path, out: Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("geoddu")
    return subprocess.run([str(exe), "segment", str(scene), "-o", str(out), "-m", str(model),
                           "-q"], capture_output=True, text=True, timeout=300)


def test_segment_warns_once_and_succeeds(tmp_path):
    model = _model_with(tmp_path / "u8-10m.pt", U8_10M)
    rng = np.random.default_rng(1)
    scene = write_geotiff(tmp_path / "scene.tif", rng.integers(0, 4000, (3, 64, 96), np.uint16))
    proc = _segment(scene, model, tmp_path / "out.tif")
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"Warning: {scene} {WARN_U16}"], proc.stderr
    with rasterio.open(tmp_path / "out.tif") as out:
        assert out.shape == (64, 96)

    same = write_geotiff(tmp_path / "same.tif", rng.integers(0, 255, (3, 64, 96), np.uint8))
    proc = _segment(same, model, tmp_path / "same-out.tif")
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_the_api_warns_with_geoddu_warning(tmp_path):
    from geoddu.engine.api import segment

    model = _model_with(tmp_path / "m.pt", {**U8_10M, "pixel_size": [0.5, 0.5]})
    scene = write_geotiff(tmp_path / "s.tif", np.ones((3, 64, 64), np.uint8))
    with pytest.warns(GeodduWarning, match="has 10 m pixels but the model was trained on 0.5 m"):
        segment(str(scene), str(tmp_path / "o.tif"), model=str(model))
    # No record (old checkpoints, tests.helpers.make_checkpoint): nothing said.
    with warnings.catch_warnings():
        warnings.simplefilter("error", GeodduWarning)
        segment(str(scene), str(tmp_path / "o2.tif"), model=str(make_checkpoint(tmp_path / "o.pt")))
