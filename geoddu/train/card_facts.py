"""What a training run records of itself for the model card (docs/model-cards.md), apart from
the per-epoch metrics: the data, its bands, pixel size and classes, the hardware, the versions;
and figures as a card holds them (finite floats, or None)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

from ..version import __version__


def model_card_facts(train_set: Any, val_set: Any, metadata: dict[str, Any],
                     record: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """What a run knows about itself for the model card, apart from the per-epoch metrics:
    the data, its bands, pixel size and classes, the hardware and the versions."""
    import platform

    from ..hardware import machine

    described = dict(record.get("dataset") or {})
    source: dict[str, Any] = {
        "kind": described.pop("kind", getattr(train_set, "kind", None)),
        "path": record.get("data"),
        "options": described,
        "patches": {"train": len(train_set), "val": len(val_set)},
        "patch_size": list(train_set.patch_shape),
    }
    images = getattr(train_set, "image_paths", None)
    if images is not None:
        source["images"] = len(images)
        source["image_sizes"] = sorted({f"{w} x {h}" for h, w in
                                        getattr(train_set, "shapes", [])})[:20]
    data = metadata.get("data") or {}
    if data.get("dtype"):
        source["dtype"] = data["dtype"]
    try:
        cpu = machine().cpu.model
    except Exception:  # noqa: BLE001 - a card without the CPU's name beats no training
        cpu = platform.processor() or platform.machine()
    hardware: dict[str, Any] = {"device": str(device), "cpu": cpu,
                                "threads": torch.get_num_threads()}
    if device.type == "cuda":
        hardware["gpu"] = torch.cuda.get_device_name(device)
    names = getattr(train_set, "band_names", None)
    facts = {
        "data_source": source,
        "bands": list(metadata["bands"]),
        "band_names": list(names) if names else None,
        "pixel_size": data.get("pixel_size"),
        "crs_units": data.get("units"),
        "normalization": metadata["normalization"],
        "classes": metadata["classes"],
        "hardware": hardware,
        "versions": {"geoddu": __version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }
    # Datasets describe themselves with numpy scalars or paths here and there: a card holds
    # plain JSON values only, and a stray type must not stop a run at its first save.
    return json.loads(json.dumps(facts, default=_json_value))


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def describe_data(dataset: Any) -> dict[str, Any] | None:
    """The dataset's "data" record for the checkpoint (PatchDataset.data_description)."""
    describe = getattr(dataset, "data_description", None)
    return describe() if callable(describe) else None


def finite(value: Any) -> float | None:
    """A figure as a card and the history hold it: NaN and infinities become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def epoch_metrics(row: dict[str, Any], val: dict[str, Any], *, best_epoch: int,
                  epochs_run: int) -> dict[str, Any]:
    """The card's "metrics" of the weights saved after epoch row["epoch"]: its history row
    and the validation split's per-class IoU."""
    return {
        "epoch": row["epoch"],
        "val_loss": finite(row["val_loss"]),
        "val_miou": finite(row["val_miou"]),
        "val_iou": {str(name): finite(v)
                    for name, v in zip(val["classes"], val["iou"], strict=True)},
        "train_loss": finite(row["train_loss"]),
        "best_epoch": best_epoch,
        "epochs_run": epochs_run,
    }


def test_figures(res: dict[str, Any], epoch: int, patches: int) -> dict[str, Any]:
    """The card's "test" section: an evaluation (geoddu.train.evaluation.evaluate) of the
    weights of `epoch` on the test split's `patches`."""
    return {
        "evaluated": True,
        "split": "test",
        "epoch": int(epoch),
        "patches": patches,
        "pixels": int(res["pixels"]),
        "loss": finite(res["loss"]),
        "miou": finite(res["miou"]),
        "overall_accuracy": finite(res["overall_accuracy"]),
        "iou": {str(name): finite(v)
                for name, v in zip(res["classes"], res["iou"], strict=True)},
    }
