"""Shared helpers for the benchmark scripts: synthetic scenes and checkpoints."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.windows import Window

from geoddu.checkpoint import save_checkpoint
from geoddu.checkpoint_metadata import build_metadata
from geoddu.models import create_model
from geoddu.resources import peak_rss_mb  # noqa: F401 - re-exported for the scripts


def add_model_options(ap: argparse.ArgumentParser, model: str = "DDU-Net(4,64,Y)",
                      base_channels: int = 16, subimage_size: int = 512) -> None:
    """The options every segment benchmark takes: the model it builds and where it works."""
    ap.add_argument("--model", default=model, help=f"architecture [{model}]")
    ap.add_argument("--base-channels", type=int, default=base_channels)
    ap.add_argument("--subimage-size", type=int, default=subimage_size)
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep scenes and checkpoints here [a new temporary folder]")


def make_scene(path: Path, size: int, seed: int = 0) -> Path:
    """A 3-band uint8 GeoTIFF of size x size with smooth structure, written window by window."""
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8",
                   crs="EPSG:32631", transform=from_origin(500000, 4000000, 0.5, 0.5),
                   tiled=True, blockxsize=512, blockysize=512, compress="deflate",
                   BIGTIFF="IF_SAFER")
    base = rng.integers(0, 255, (3, 64, 64)).astype(np.float32)
    tmp = path.with_suffix(".partial.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        step = 2048
        for r in range(0, size, step):
            for c in range(0, size, step):
                h, w = min(step, size - r), min(step, size - c)
                yy, xx = np.mgrid[r : r + h, c : c + w]
                pattern = base[:, (yy // 97) % 64, (xx // 89) % 64]
                noise = rng.normal(0, 12, (3, h, w))
                dst.write(np.clip(pattern + noise, 0, 255).astype(np.uint8),
                          window=Window(c, r, w, h))
    tmp.rename(path)
    return path


def make_checkpoint(path: Path, name: str, base_channels: int, subimage_size: int,
                    classes: int = 6, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = create_model(name, in_channels=3, num_classes=classes, base_channels=base_channels)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(4.0)  # keep random activations in a sane range
    save_checkpoint(path, model, build_metadata(model.config, subimage_size=subimage_size))
    return path



def workdir(given: Path | None, prefix: str = "geoddu-bench-") -> Path:
    """The folder for a benchmark's scenes and checkpoints: `given`, else a new temporary one."""
    work = given or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    return work


def run_one(script: str, *args: Any) -> dict[str, Any]:
    """`script --one ARGS` in a fresh process (so that its peak RSS is its own); the JSON
    object it prints last."""
    out = subprocess.run([sys.executable, script, "--one", *map(str, args)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
