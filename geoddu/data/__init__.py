"""Training datasets: the paper's synthetic set, DeepGlobe land cover, and users' own folders."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import GeodduError

if TYPE_CHECKING:
    from .base import PatchDataset

DATASETS = ("deepglobe", "synthetic", "folder")

__all__ = ["DATASETS", "IGNORE", "PatchDataset", "load_classes_file", "open_dataset"]


def __getattr__(name: str) -> Any:
    # Lazy: the CLI names DATASETS in its options, and `geoddu --help` must not wait for torch
    # (which .base imports for torch.utils.data.Dataset).
    if name in ("IGNORE", "PatchDataset", "load_classes_file"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_dataset(kind: str, root: str | os.PathLike, split: str, **options: Any) -> PatchDataset:
    """One split of a dataset; `options` are the dataset's own keywords (None = its default)."""
    options = {k: v for k, v in options.items() if v is not None}
    if kind == "synthetic":
        from .synthetic import SyntheticDataset

        return SyntheticDataset(root, split)
    if kind == "deepglobe":
        from .deepglobe import DeepGlobeDataset

        keys = ("patch_size", "seed", "val_fraction", "test_fraction", "ignore_unknown")
        return DeepGlobeDataset(root, split, **{k: options[k] for k in keys if k in options})
    if kind == "folder":
        from .folder import FolderDataset

        keys = ("patch_size", "seed", "val_fraction", "test_fraction", "classes_file",
                "class_column", "bands")
        return FolderDataset(root, split, **{k: options[k] for k in keys if k in options})
    raise GeodduError(f"unknown dataset {kind!r}; choose from {', '.join(DATASETS)}")
