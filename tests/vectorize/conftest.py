"""Fixtures of the vectorize tests (the maps themselves are in class_maps.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from class_maps import blocky, write_classes


@pytest.fixture
def classes_tif(tmp_path: Path) -> tuple[Path, np.ndarray]:
    cls = blocky()
    return write_classes(tmp_path / "classes.tif", cls), cls
