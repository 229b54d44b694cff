"""Training end to end on DeepGlobe-style and own (vector-labelled) data, then segmenting."""

from __future__ import annotations

import json
import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from geoddu.cli.main import cli
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import box

from geoddu.checkpoint import load_checkpoint

UTM = CRS.from_epsg(32631)
TRANSFORM = Affine(1.0, 0, 600000.0, 0, -1.0, 5770000.0)
TINY = ["--depth", "2", "--base-channels", "4", "--comm-features", "8", "--epochs", "1",
        "--batch-size", "2", "-q"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _png_jpg(path, array, driver):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=array.shape[2], height=array.shape[1],
                           count=3, dtype="uint8") as dst:
            dst.write(array)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)


def _deepglobe(root, seed: int, mask: np.ndarray):
    """A DeepGlobe-layout folder of 3 random JPEG images with `mask` as every PNG mask."""
    root.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(3):
        image = rng.integers(0, 255, mask.shape).astype(np.uint8)
        _png_jpg(root / f"{i}_sat.jpg", image, "JPEG")
        _png_jpg(root / f"{i}_mask.png", mask, "PNG")
    return root


def test_deepglobe_training_and_evaluation(tmp_path):
    mask = np.zeros((3, 128, 128), np.uint8)
    mask[1, :64] = 255  # forest (0, 255, 0) on top, unknown (black) below
    root = _deepglobe(tmp_path / "dg", 0, mask)
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--dataset", "deepglobe", "--data", str(root), "-o",
                                   str(run), "--patch-size", "64", "--subimages", "2", *TINY])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "best.pt")
    assert ckpt["bands"] == [1, 2, 3] and ckpt["subimage_size"] == 32
    assert [c["name"] for c in ckpt["classes"]][-1] == "unknown"
    assert ckpt["training"]["dataset"]["patch_size"] == 64
    assert ckpt["training"]["config"]["augment"] is True  # Table VI recipe: augmentation on
    res = CliRunner().invoke(cli, ["evaluate", "-m", str(run / "best.pt"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["images"] == 4 and out["grid"] == [2, 2]  # the held-out image's 4 patches
    assert out["iou"]["unknown"] is None  # ignored, as in the paper's mIoU


def test_vector_labelled_folder_trains_and_segments(tmp_path):
    root = tmp_path / "own"
    (root / "images").mkdir(parents=True)
    image = np.zeros((2, 96, 96), np.uint16)
    image[:, :, 48:] = 1000
    with rasterio.open(root / "images" / "scene.tif", "w", driver="GTiff", width=96, height=96,
                       count=2, dtype="uint16", crs=UTM, transform=TRANSFORM) as dst:
        dst.write(image)
    x0, y0 = TRANSFORM * (48, 0)
    x1, y1 = TRANSFORM * (96, 96)
    gpd.GeoDataFrame({"cls": ["bright"]}, geometry=[box(x0, y1, x1, y0)], crs=UTM).to_file(
        root / "labels.gpkg")
    (root / "classes.yaml").write_text(
        "classes:\n  - {name: dark, color: [0, 0, 0]}\n  - {name: bright, color: [255, 255, 0]}\n"
        "column: cls\nfill: dark\n")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--dataset", "folder", "--data", str(root), "-o",
                                   str(run), "--patch-size", "32", "--subimages", "1", *TINY])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "best.pt")
    assert [c["name"] for c in ckpt["classes"]] == ["dark", "bright"]
    assert ckpt["normalization"]["std"][0] > 1  # 16-bit data standardised, not divided by 255
    res = CliRunner().invoke(cli, ["segment", str(root / "images" / "scene.tif"), "-o",
                                   str(tmp_path / "classes.tif"), "-m", str(run / "best.pt"),
                                   "-q"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tmp_path / "classes.tif") as out:
        assert out.crs == UTM and out.shape == (96, 96)


def test_frozen_pretrained_resnet_encoder(tmp_path):
    from geoddu.models.resnet import ResNetEncoder
    from geoddu.train import resume_training

    root = _deepglobe(tmp_path / "dg", 1, np.full((3, 64, 64), 255, np.uint8))
    # A stand-in for torchvision's resnet18 weights: same names and shapes.
    torch.manual_seed(5)
    weights = {k: v for k, v in ResNetEncoder("resnet18").state_dict().items()
               if not k.startswith("inter_conv.")}
    torch.save(weights, tmp_path / "resnet18.pth")
    run = tmp_path / "run"
    res = CliRunner().invoke(cli, [
        "train", "--dataset", "deepglobe", "--data", str(root), "-o", str(run),
        "--patch-size", "64", "--subimages", "2", "--encoder", "resnet18", "--comm-features",
        "16", "--encoder-weights", str(tmp_path / "resnet18.pth"), "--epochs", "1",
        "--batch-size", "1", "-q"])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["training"]["freeze_encoder"] is True
    assert ckpt["normalization"]["mean"][0] == 123.675  # ImageNet statistics for ImageNet weights
    for key in ("encoder.conv1.weight", "encoder.layer2.0.conv1.weight",
                "encoder.bn1.running_mean"):
        assert torch.equal(ckpt["state_dict"][key], weights[key.removeprefix("encoder.")]), key
    resume_training(run, epochs=2)  # the encoder stays frozen after a resume
    again = load_checkpoint(run / "last.pt")
    assert torch.equal(again["state_dict"]["encoder.conv1.weight"], weights["conv1.weight"])
