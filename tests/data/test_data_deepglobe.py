"""DeepGlobe land cover: both folder layouts, colour decoding, patches and seeded splits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from geoddu.data import open_dataset
from geoddu.data.deepglobe import CLASSES, UNKNOWN, decode_mask, find_images
from geoddu.errors import GeodduError

SIZE, PATCH = 256, 128


def _write(path, array, driver):
    count, h, w = array.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver=driver, width=w, height=h, count=count,
                           dtype="uint8") as dst:
            dst.write(array)
    path.with_name(path.name + ".aux.xml").unlink(missing_ok=True)


def _labels(seed):
    """A class map of 32 px blocks with every class, and its impure colour mask."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(CLASSES), (SIZE // 32, SIZE // 32))
    labels = blocks.repeat(32, 0).repeat(32, 1).astype(np.uint8)
    colors = np.array([c["color"] for c in CLASSES], np.int16)
    rgb = np.moveaxis(colors[labels], -1, 0)
    # JPEG-like impurity: pure 0/255 pushed up to 100 towards the middle, never across 128.
    noise = rng.integers(0, 100, rgb.shape)
    rgb = np.where(rgb >= 128, rgb - noise, rgb + noise)
    return labels, rgb.astype(np.uint8)


def _fake(folder, ids, image_dir=None, mask_dir=None):
    image_dir = image_dir or folder
    mask_dir = mask_dir or folder
    image_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    truth = {}
    for n, i in enumerate(ids):
        labels, rgb = _labels(n)
        sat = (np.random.default_rng(100 + n).integers(0, 255, (3, SIZE, SIZE))).astype(np.uint8)
        _write(image_dir / f"{i}_sat.jpg", sat, "JPEG")
        _write(mask_dir / f"{i}_mask.png", rgb, "PNG")
        truth[i] = labels
    return truth


def test_decode_thresholds_each_channel():
    rgb = np.array([[0, 255, 255], [250, 200, 10], [130, 127, 129], [255, 0, 0], [20, 30, 40],
                    [127, 128, 128]], np.uint8).T[:, None, :]
    # urban, agriculture, rangeland, red (not a class -> unknown), unknown, urban
    assert decode_mask(rgb)[0].tolist() == [0, 1, 2, UNKNOWN, UNKNOWN, 0]
    pure = np.array([c["color"] for c in CLASSES], np.uint8).T[:, None, :]
    assert decode_mask(pure)[0].tolist() == list(range(7))


def test_original_layout_patches_and_decoding(tmp_path):
    truth = _fake(tmp_path / "dg", ["11", "22", "33"])
    ds = open_dataset("deepglobe", tmp_path / "dg", "train", patch_size=PATCH)
    assert ds.layout == "original"
    assert len(ds.images) == 1 and len(ds) == 4  # 256 px -> 2 x 2 patches of 128
    assert ds.ignore_index == UNKNOWN and ds.bands == [1, 2, 3] and ds.patch_shape == (128, 128)
    image_id = ds.images[0][0]
    for k, (_, r, c) in enumerate(ds.patches):
        image, labels = ds[k]
        assert image.shape == (3, PATCH, PATCH) and image.dtype == np.float32
        assert np.array_equal(labels, truth[image_id][r : r + PATCH, c : c + PATCH])


def test_the_paper_cut_drops_the_remainder(tmp_path):
    _fake(tmp_path / "dg", ["1", "2", "3"])
    ds = open_dataset("deepglobe", tmp_path / "dg", "val", patch_size=100)
    # 256 px -> patches at 0 and 100; the last 56 px are dropped, as 2448 -> 2 x 1024.
    assert sorted({(r, c) for _, r, c in ds.patches}) == [(0, 0), (0, 100), (100, 0), (100, 100)]


def test_splits_are_seeded_and_disjoint(tmp_path):
    _fake(tmp_path / "dg", [str(i) for i in range(8)])

    def ids(split, seed):
        return [i for i, *_ in open_dataset("deepglobe", tmp_path / "dg", split,
                                            patch_size=PATCH, seed=seed).images]

    splits = {s: ids(s, 3) for s in ("train", "val", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(str(i) for i in range(8))
    assert len(splits["val"]) == len(splits["test"]) == 1
    assert ids("train", 3) == splits["train"]
    assert any(ids("train", s) != splits["train"] for s in range(4, 10))


def test_torchgeo_layout(tmp_path):
    data = tmp_path / "tg" / "data"
    _fake(data, ["5", "6", "7"], data / "training_data/images", data / "training_data/masks")
    test_truth = _fake(data, ["9"], data / "test_data/images", data / "test_data/masks")
    found = find_images(tmp_path / "tg")
    assert found["layout"] == "torchgeo" and len(found["items"]) == 3
    test = open_dataset("deepglobe", tmp_path / "tg", "test", patch_size=PATCH)
    assert [i for i, *_ in test.images] == ["9"]
    _, labels = test[0]
    assert np.array_equal(labels, test_truth["9"][:PATCH, :PATCH])
    # The `data` folder itself works too; train + val come from training_data.
    train = open_dataset("deepglobe", data, "train", patch_size=PATCH)
    val = open_dataset("deepglobe", data, "val", patch_size=PATCH)
    assert sorted(i for i, *_ in train.images + val.images) == ["5", "6", "7"]


def test_keep_unknown(tmp_path):
    _fake(tmp_path / "dg", ["1", "2", "3"])
    ds = open_dataset("deepglobe", tmp_path / "dg", "train", patch_size=PATCH,
                      ignore_unknown=False)
    assert ds.ignore_index is None


def test_wrong_folder_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GeodduError, match=r"<id>_sat\.jpg \+ <id>_mask\.png"):
        open_dataset("deepglobe", tmp_path / "empty", "train")
    _fake(tmp_path / "dg", ["1", "2", "3"])
    (tmp_path / "dg" / "2_mask.png").unlink()
    with pytest.raises(GeodduError, match=r"1 DeepGlobe image\(s\) have no mask: .*2_mask\.png"):
        open_dataset("deepglobe", tmp_path / "dg", "train")
    with pytest.raises(GeodduError, match="not found"):
        open_dataset("deepglobe", tmp_path / "nowhere", "train")
