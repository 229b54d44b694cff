"""The class map most vectorize tests start from."""

from pathlib import Path

import numpy as np
import pytest
from class_maps import blocky, write_classes


@pytest.fixture
def classes_tif(tmp_path: Path) -> tuple[Path, np.ndarray]:
    cls = blocky()
    return write_classes(tmp_path / "classes.tif", cls), cls
