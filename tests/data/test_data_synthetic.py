"""The paper's synthetic set (Sec. III-D1): geometry of the images, storage, `geoddu synth`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from geoddu.cli.main import cli

from geoddu.data import open_dataset
from geoddu.data.synthetic import RADIUS, SUBIMAGE, generate, write
from geoddu.errors import GeodduError


@pytest.mark.parametrize("k", [2, 3, 6])
def test_images_follow_the_paper(k):
    images, masks = generate(k, 40, np.random.default_rng(0))
    assert images.shape == masks.shape == (40, SUBIMAGE, SUBIMAGE * k)
    assert set(np.unique(images)) == {0, 255}
    assert set(np.unique(masks)) == {0, 1, 2}
    for img, mask in zip(images, masks, strict=True):
        # Circles (value 255) are exactly the circle class; the line is only in the mask.
        assert np.array_equal(img == 255, mask == 2)
        cells = [c for c in range(k) if (img[:, c * SUBIMAGE : (c + 1) * SUBIMAGE] == 255).any()]
        assert len(cells) == 2, "two circles in two different subimages"
        for c in cells:
            sub = img[:, c * SUBIMAGE : (c + 1) * SUBIMAGE] == 255
            ys, xs = np.nonzero(sub)
            # Wholly inside: no circle pixel on a subimage border row or column.
            assert ys.min() > 0 and xs.min() > 0 and ys.max() < SUBIMAGE - 1
            assert xs.max() < SUBIMAGE - 1
            assert ys.max() - ys.min() == 2 * RADIUS
        # The line reaches from one circle to the other, crossing the subimage border(s).
        line_cols = np.nonzero((mask == 1).any(axis=0))[0]
        assert line_cols.size > 0
        border = cells[0] * SUBIMAGE + SUBIMAGE
        line_or_circle = ((mask == 1) | (mask == 2)).any(axis=0)
        assert line_or_circle[border - 1] and line_or_circle[border]


def test_generation_is_seeded():
    a = generate(3, 5, np.random.default_rng(7))
    b = generate(3, 5, np.random.default_rng(7))
    c = generate(3, 5, np.random.default_rng(8))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_write_and_read(tmp_path):
    out = write(tmp_path / "k2", 2, train=6, val=3, test=2, seed=1)
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["k"] == 2 and meta["counts"] == {"train": 6, "val": 3, "test": 2}
    ds = open_dataset("synthetic", out, "train")
    assert len(ds) == 6 and ds.grid == (1, 2) and ds.patch_shape == (32, 64)
    assert ds.bands == [1] and ds.normalization == {"mean": [0.0], "std": [255.0]}
    assert [c["name"] for c in ds.classes] == ["background", "line", "circle"]
    image, labels = ds[0]
    assert image.shape == (1, 32, 64) and image.dtype == np.float32 and image.max() == 255
    assert labels.shape == (32, 64) and labels.dtype == np.int64
    # The test split does not depend on how many training images were asked for.
    other = write(tmp_path / "other", 2, train=2, val=3, test=2, seed=1)
    assert np.array_equal(open_dataset("synthetic", other, "test").images,
                          open_dataset("synthetic", out, "test").images)
    with pytest.raises(GeodduError, match="already holds"):
        write(out, 2, train=1, val=1, test=1)


def test_missing_set_is_one_clear_error(tmp_path):
    with pytest.raises(GeodduError, match="geoddu synth"):
        open_dataset("synthetic", tmp_path, "train")


def test_synth_command(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["synth", "-o", str(tmp_path / "k4"), "--k", "4", "--train", "3",
                              "--val", "2", "--test", "1", "--seed", "5"])
    assert res.exit_code == 0, res.output
    assert "k=4" in res.output
    ds = open_dataset("synthetic", tmp_path / "k4", "val")
    assert ds.images.shape == (2, 32, 128)
    again = runner.invoke(cli, ["synth", "-o", str(tmp_path / "k4"), "--k", "4"])
    assert again.exit_code == 1 and "--overwrite" in again.output
