"""Shared fixtures: small real GeoTIFFs and small real checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_checkpoint, write_geotiff


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """3-band uint8 scene of 150 x 205 (not a multiple of the subimage size)."""
    rng = np.random.default_rng(0)
    data = rng.integers(0, 255, (3, 150, 205), dtype=np.uint8)
    return write_geotiff(tmp_path / "scene.tif", data, tiled=True, blockxsize=64, blockysize=64)


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model.pt")


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: intra-op threads only add synchronisation, and on a busy
    machine they thrash (test_train.py ran 25x slower on two threads while other jobs ran)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
