"""Helpers for tests: small real GeoTIFFs and small real checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin

from geoddu.checkpoint import build_metadata, save_checkpoint
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
