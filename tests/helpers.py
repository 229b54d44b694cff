"""Helpers for tests: small real GeoTIFFs and small real checkpoints."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from geoddu.checkpoint import save_checkpoint
from geoddu.checkpoint_metadata import build_metadata
from geoddu.models import create_model

CRS = "EPSG:32631"
TRANSFORM = from_origin(500000, 4000000, 10, 10)


def write_geotiff(path: Path, data: np.ndarray, nodata=None, **kw) -> Path:
    count, h, w = data.shape
    profile = dict(
        driver="GTiff",
        width=w,
        height=h,
        count=count,
        dtype=data.dtype,
        crs=CRS,
        transform=TRANSFORM,
        nodata=nodata,
    )
    profile.update(kw)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def make_checkpoint(
    path: Path,
    name: str = "DDU-Net(2,4,Y)",
    in_channels: int = 3,
    num_classes: int = 4,
    subimage_size: int = 32,
    seed: int = 0,
    **kw,
) -> Path:
    torch.manual_seed(seed)
    model = create_model(
        name, in_channels=in_channels, num_classes=num_classes, base_channels=4, **kw
    )
    # Random weights with BatchNorm statistics that are not the identity, so that eval mode
    # really exercises the normalisation path.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    save_checkpoint(path, model, build_metadata(model.config, subimage_size=subimage_size))
    return path


# -- torchrun subprocesses ----------------------------------------------------------------------
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def rank_env() -> dict[str, str]:
    """One thread per rank: the ranks share this machine's few cores."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among torchrun's children (Linux /proc)."""
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return None
    for pid in children:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return int(pid)
    return None
