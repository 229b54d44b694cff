"""``geoddu assess``'s engine: a class map and reference data in, accuracy and error-adjusted
areas out (one function for the CLI, the Python API and the QGIS algorithm)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geoddu.errors import GeodduError

from .estimators import DESIGNS, Estimates, estimate
from .map_info import MapInfo, class_pixel_counts, open_class_map
from .reference import ReferenceSample, read_reference

__all__ = ["Assessment", "assess"]

M2_PER_HA = 10_000.0


@dataclass
class Assessment:
    """The result of :func:`assess`. ``estimates`` areas are in hectares."""

    map_path: str
    reference_path: str
    reference_kind: str  # points, polygons, points and polygons, raster
    sample_unit: str  # points or pixels
    class_ids: list[int]
    estimates: Estimates
    mapped_pixels: np.ndarray
    pixel_area_m2: float
    sample: ReferenceSample
    notes: list[str] = field(default_factory=list)
    # The checkpoint whose model card the figures were written into (`into`), and what went
    # under its "accuracy" key.
    model_path: str | None = None
    card_section: dict[str, Any] | None = None

    @property
    def skipped_total(self) -> int:
        return int(sum(self.sample.skipped_counts.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "map": self.map_path,
            "reference": self.reference_path,
            "reference_kind": self.reference_kind,
            "sample_unit": self.sample_unit,
            "class_ids": list(self.class_ids),
            "pixel_area_m2": self.pixel_area_m2,
            "area_unit": "ha",
            "mapped_pixels": [int(v) for v in self.mapped_pixels],
            "used": int(self.sample.used),
            "skipped": dict(self.sample.skipped_counts),
            "skipped_list": [s.to_dict() for s in self.sample.skipped],
            "notes": list(self.notes),
            **({"into": self.model_path} if self.model_path is not None else {}),
            **self.estimates.to_dict(),
        }


def assess(
    map_path: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    *,
    class_column: str | None = None,
    layer: str | None = None,
    design: str = "stratified",
    into: str | os.PathLike[str] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Assessment:
    """Assess the class map ``map_path`` against ``reference`` (points or polygons with the
    reference class in ``class_column``, or a reference raster on the map's grid).

    The map's class pixel counts come from one blockwise pass over the map; with
    ``design="stratified"`` they are the strata weights of Olofsson et al. (2014).

    ``into``: the checkpoint of the model that made the map; the figures are written into its
    model card under ``accuracy`` (:mod:`.model_card`), atomically, once everything is
    computed. It is checked first, so a missing or damaged model costs no work.
    """
    if design not in DESIGNS:
        raise GeodduError(f"unknown design {design!r} (one of {', '.join(DESIGNS)})")
    if into is not None:
        from .model_card import check_model

        check_model(into)
    info: MapInfo = open_class_map(map_path)
    pixel_area = info.require_pixel_area()

    def step(done: int, total: int) -> None:
        if progress is not None:
            progress("counting map pixels", done, total)

    mapped = class_pixel_counts(info, progress=step)
    n_classes = max(len(info.class_names or []), len(mapped), 1)
    mapped = np.pad(mapped, (0, n_classes - len(mapped)))
    if mapped.sum() == 0:
        raise GeodduError(f"{info.path}: the map has no classified pixel (all nodata)")
    if progress is not None:
        progress("reading the reference", 0, 1)
    sample = read_reference(info, reference, n_classes, class_column=class_column, layer=layer)
    if sample.used == 0:
        why = ", ".join(f"{n} {reason}" for reason, n in sample.skipped_counts.items())
        raise GeodduError(f"{os.fspath(reference)}: no usable reference unit ({why or 'none'})")
    # Classes with neither mapped area nor reference units add only empty rows and columns.
    keep = [i for i in range(n_classes)
            if mapped[i] > 0 or sample.counts[i].sum() > 0 or sample.counts[:, i].sum() > 0]
    counts = sample.counts[np.ix_(keep, keep)]
    names = [info.name_of(i) for i in keep]
    hectares = mapped[keep] * pixel_area / M2_PER_HA
    notes = _notes(design, sample, names, mapped[keep], counts)
    est = estimate(counts, hectares, classes=names, design=design)
    result = Assessment(
        map_path=info.path, reference_path=os.fspath(reference),
        reference_kind=sample.kind, sample_unit=sample.unit, class_ids=keep, estimates=est,
        mapped_pixels=mapped[keep], pixel_area_m2=pixel_area, sample=sample, notes=notes)
    if into is not None:
        from .model_card import write_into_card

        if progress is not None:
            progress("writing the model card", 0, 1)
        result.card_section = write_into_card(result, into)
        result.model_path = os.fspath(into)
    return result


def _notes(design: str, sample: ReferenceSample, names: list[str], mapped: np.ndarray,
           counts: np.ndarray) -> list[str]:
    """What the user must know to read the figures right."""
    notes = []
    if sample.unit == "pixels" and sample.kind != "raster":
        notes.append("polygon reference: the matrix counts pixels (pixel centres inside each "
                     "polygon), not independent sample units, so standard errors and "
                     "confidence intervals are too narrow (see docs/accuracy.md)")
    per_stratum = counts.sum(axis=1)
    if design == "stratified":
        empty = [n for n, a, c in zip(names, mapped, per_stratum, strict=True) if a > 0 and c == 0]
        if empty:
            notes.append("mapped but not sampled (their area is left out of the estimates): "
                         + ", ".join(empty))
        single = [n for n, c in zip(names, per_stratum, strict=True) if c == 1]
        if single:
            notes.append("one sample unit only, so no standard error: " + ", ".join(single))
    if sample.skipped_counts:
        notes.append("left out: " + ", ".join(f"{n} {reason}"
                                              for reason, n in sample.skipped_counts.items()))
    return notes
