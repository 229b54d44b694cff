"""Self-describing checkpoints: everything `segment`, `info` and `train` need, in one file.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it loads with
`torch.load(..., weights_only=True)`: opening a checkpoint never runs code from it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import GeodduError, first_line
from .models.ddunet import DEFAULT_CONFIG, DDUNet

FORMAT = "geoddu-checkpoint"
FORMAT_VERSION = 1

# Distinct, colour-blind-friendly defaults for checkpoints that do not name their classes.
DEFAULT_COLORS = [
    (0, 0, 0),
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
    (127, 127, 127),
    (255, 255, 255),
]


def default_classes(num_classes: int) -> list[dict[str, Any]]:
    return [
        {"name": f"class {k}", "color": list(DEFAULT_COLORS[k % len(DEFAULT_COLORS)])}
        for k in range(num_classes)
    ]


def default_normalization(bands: int, scale: float = 255.0) -> dict[str, list[float]]:
    """x -> (x - mean) / std per band; the default maps 8-bit values to [0, 1]."""
    return {"mean": [0.0] * bands, "std": [scale] * bands}


def build_metadata(
    config: dict[str, Any],
    *,
    classes: list[dict[str, Any]] | None = None,
    bands: list[int] | None = None,
    normalization: dict[str, list[float]] | None = None,
    subimage_size: int = 256,
) -> dict[str, Any]:
    """The descriptive part of a checkpoint, with defaults filled in and checked."""
    n_in, n_cls = config["in_channels"], config["num_classes"]
    classes = classes or default_classes(n_cls)
    if len(classes) != n_cls:
        raise GeodduError(f"{len(classes)} class names given for a model with {n_cls} classes")
    for c in classes:
        if "name" not in c or len(c.get("color", ())) != 3:
            raise GeodduError("each class needs a name and an RGB colour [r, g, b]")
    bands = bands or list(range(1, n_in + 1))
    if len(bands) != n_in:
        raise GeodduError(f"{len(bands)} bands given for a model with {n_in} input channels")
    normalization = normalization or default_normalization(n_in)
    for key in ("mean", "std"):
        if len(normalization.get(key, ())) != n_in:
            raise GeodduError(f"normalisation {key} needs one value per band ({n_in})")
    stride = 16 if config["encoder"] != "unet" else 2 ** config["depth"]
    if subimage_size % stride:
        raise GeodduError(
            f"subimage size {subimage_size} is not a multiple of the model stride {stride}"
        )
    return {
        "classes": [
            {"name": str(c["name"]), "color": [int(v) for v in c["color"]]} for c in classes
        ],
        "bands": [int(b) for b in bands],
        "normalization": {k: [float(v) for v in normalization[k]] for k in ("mean", "std")},
        "subimage_size": int(subimage_size),
    }


def save_checkpoint(
    path: str | os.PathLike,
    model: DDUNet,
    metadata: dict[str, Any],
    *,
    training: dict[str, Any] | None = None,
    state: dict[str, Any] | None = None,
) -> Path:
    """Write atomically: a killed run leaves the previous checkpoint, never a truncated one.

    `training` is the training configuration (for the record); `state` is what `--resume`
    needs (optimiser, scheduler, epoch, RNG) and is only stored in `last.pt`-style files.
    """
    path = Path(path)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geoddu_version": __version__,
        "config": dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **metadata,
        "training": training or {},
    }
    if state is not None:
        payload["resume"] = state
    if not path.parent.exists():
        raise GeodduError(f"{path.parent}: output directory does not exist")
    tmp = path.with_name(f".{path.name}.geoddu-tmp-{os.getpid()}")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint; any problem is one GeodduError line."""
    path = Path(path)
    if not path.exists():
        raise GeodduError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign files are one user error
        raise GeodduError(f"{path}: not a readable geoddu checkpoint ({first_line(exc)})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise GeodduError(f"{path}: not a geoddu checkpoint")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise GeodduError(f"{path}: written by a newer geoddu ({ckpt.get('geoddu_version')})")
    return ckpt


def model_from_checkpoint(ckpt: dict[str, Any]) -> DDUNet:
    config = {**DEFAULT_CONFIG, **ckpt["config"]}
    model = DDUNet(**config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise GeodduError(
            f"checkpoint weights do not fit its architecture: {first_line(exc)}"
        ) from exc
    return model

