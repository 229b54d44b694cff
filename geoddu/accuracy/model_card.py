"""An assessment written into the model card of the model that made the map
(``geoddu assess --into model.pt``): the card's ``accuracy`` section.

The section is plain JSON values (no numpy), in the shape geoddu.card_sections checks, so the
checkpoint still loads with ``torch.load(weights_only=True)``. torch is imported only when a
checkpoint is touched: the assessment itself never needs it.
"""

from __future__ import annotations

import datetime
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CARD_KEY", "card_section", "check_model", "write_into_card"]

# The card field the figures go under (docs/model-cards.md).
CARD_KEY = "accuracy"


def _num(value: Any) -> float | None:
    """A plain float, None for NaN or infinity (a figure the sample cannot give)."""
    v = float(value)
    return v if math.isfinite(v) else None


def _figure(estimate: Any, se: Any, z: float) -> dict[str, float | None]:
    est, err = _num(estimate), _num(se)
    return {"estimate": est, "se": err, "ci": None if err is None else z * err}


# `result` below is a geoddu.accuracy.assess.Assessment, typed Any: that module calls this one,
# and the package's modules import in one direction only (tests/layout).
def card_section(result: Any, *, date: str | None = None) -> dict[str, Any]:
    """The ``accuracy`` card section of an Assessment: overall accuracy, per-class user's and
    producer's accuracy, F1, IoU and error-adjusted area (ha) with 95% intervals ("ci" is the
    half-width), quantity and allocation disagreement, the sample and its design, the map's
    and the reference's file names, and the date (UTC, ISO 8601)."""
    e = result.estimates
    z = float(e.z)
    counts = np.asarray(e.counts)
    classes = []
    for i, (class_id, name) in enumerate(zip(result.class_ids, e.classes, strict=True)):
        classes.append({
            "id": int(class_id),
            "name": str(name),
            "mapped_pixels": int(result.mapped_pixels[i]),
            "mapped_area_ha": float(e.mapped_area[i]),
            "sample_units": int(counts[i].sum()),
            "users_accuracy": _figure(e.users[i], e.users_se[i], z),
            "producers_accuracy": _figure(e.producers[i], e.producers_se[i], z),
            "f1": _num(e.f1[i]),
            "iou": _num(e.iou[i]),
            "area_ha": _figure(e.area[i], e.area_se[i], z),
        })
    return {
        "map": Path(result.map_path).name,
        "reference": Path(result.reference_path).name,
        "reference_kind": str(result.reference_kind),
        "sample_unit": str(result.sample_unit),
        "design": str(e.design),
        "sample_size": int(result.sample.used),
        "skipped": int(result.skipped_total),
        "z": z,
        "area_unit": "ha",
        "overall_accuracy": _figure(e.overall, e.overall_se, z),
        "quantity_disagreement": _num(e.quantity_disagreement),
        "allocation_disagreement": _num(e.allocation_disagreement),
        "classes": classes,
        "notes": [str(n) for n in result.notes],
        "date": date or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def check_model(model: str | os.PathLike[str]) -> None:
    """Read and check the checkpoint before any work: a missing, unreadable or damaged model is
    one GeodduError line, and nothing has been written yet."""
    from geoddu.checkpoint import load_checkpoint

    load_checkpoint(model)


def write_into_card(result: Any, model: str | os.PathLike[str]) -> dict[str, Any]:
    """Put the assessment under the card's ``accuracy`` key, in place and atomically (temp file
    renamed over the checkpoint; the weights are written back as read, bit for bit). Returns
    the section written."""
    from geoddu.checkpoint import update_card

    section = card_section(result)
    return update_card(model, {CARD_KEY: section})[CARD_KEY]
