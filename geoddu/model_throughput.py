"""How fast a checkpoint segments on a device, in each precision: megapixels per second of
:meth:`SegmentationModel.predict` (the in-memory reference, which runs the model as the engine
does) on a synthetic image of whole subimages, with communication."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .precision_probe import candidates

if TYPE_CHECKING:
    from .predictor import SegmentationModel

MIN_SECONDS, MAX_REPEATS = 0.5, 5
# The image: at least 2 x 2 subimages and MIN_SIDE pixels a side, so that a model of small
# subimages is timed on enough pixels for the per-call costs not to dominate.
MIN_SIDE = 512


def checkpoint_throughput(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    precisions: Sequence[str] | None = None,
    subimages: int | None = None,
) -> dict[str, Any]:
    """Mpx/s of the checkpoint at ``path`` on ``device`` in each of ``precisions`` (default:
    fp32 and the reduced precisions the device has, :func:`precision_probe.candidates`).

    Each precision loads its own copy of the model (a bf16 model on the CPU is a bf16 copy of
    the weights), runs one subimage to warm up, then an image of ``subimages`` x ``subimages``
    (default: 2 a side, more up to :data:`MIN_SIDE` pixels) until :data:`MIN_SECONDS` have
    passed (at most :data:`MAX_REPEATS` runs), and keeps its fastest run.
    """
    device = torch.device(device)
    skipped: dict[str, str] = {}
    if precisions is None:
        precisions, skipped = candidates(device)
    rates: dict[str, float] = {}
    size = None
    for precision in precisions:
        model = _load(path, device, precision)
        sub = model.subimage_size
        size = sub * (subimages or max(2, -(-MIN_SIDE // sub)))
        image = _image(model, size)
        model.predict(image[:, :sub, :sub])
        best, spent, repeats = float("inf"), 0.0, 0
        while repeats < 1 or (spent < MIN_SECONDS and repeats < MAX_REPEATS):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model.predict(image)  # returns numpy: the device has finished
            took = time.perf_counter() - start
            best, spent, repeats = min(best, took), spent + took, repeats + 1
        rates[precision] = size * size / 1e6 / best
        del model
    return {"path": os.fspath(path), "device": str(device), "size": [size, size],
            "mpx_per_s": rates, "skipped": skipped}


def _load(path: str | os.PathLike, device: torch.device, precision: str) -> SegmentationModel:
    # The one place that turns a precision into a model, so the engine's way is followed.
    from .predictor import load_model

    return load_model(path, device=device, precision=precision)


def _image(model: SegmentationModel, size: int) -> np.ndarray:
    """Bands x size x size values distributed as the model's training data was."""
    rng = np.random.default_rng(0)
    mean = model.mean.detach().cpu().numpy().reshape(-1, 1, 1)
    std = model.std.detach().cpu().numpy().reshape(-1, 1, 1)
    noise = rng.standard_normal((len(model.bands), size, size), dtype=np.float32)
    return (mean + std * noise).astype(np.float32)
