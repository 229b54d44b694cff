"""One training run, described once: what to train on, which model, how, and where to write it.

Every front builds a :class:`TrainRequest`: the CLI from `geoddu train`'s options (or a JSON
file, `geoddu train --request FILE|-`), the Python API (`geoddu.train_model`) from keywords, the
QGIS plugin from its parameters. It is checked once, when built, and :func:`geoddu.train.api.
train_model` runs it. Plain data without torch, so that `geoddu --help` stays instant and the
QGIS bridge can send it to a `geoddu` subprocess as JSON.

A field left as None is "not given": the dataset's preset (Tables VI and X), the model's default
or the run's own (on --resume) applies, exactly as for an option left off the command line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..data import DATASETS
from ..errors import GeodduError
from ..model_config import ENCODERS, MAX_CHANNELS, MAX_CLASSES, MAX_DEPTH
from ..parallel import PRECISIONS
from ..request_base import Check, JsonRequest, checked

__all__ = ["BATCHNORM_RULES", "LOSSES", "TrainRequest", "parse_grid"]

# The names geoddu.train.losses.LOSSES and geoddu.train.batchnorm.RULES define (both import
# torch; tests/train/test_train_request.py checks the two agree).
LOSSES = ("class-dice", "dice")
BATCHNORM_RULES = ("pooled", "per-subimage")

_COUNT = Check(low=1, integer=True)
# The bounds a checkpoint's config is held to (geoddu.checkpoint): a model trained here loads.
_CHANNELS = Check(low=1, high=MAX_CHANNELS, integer=True)
_FRACTION = Check(low=0, high=1, high_open=True)
_PATHS = ("run_dir", "data", "init_model", "encoder_weights", "classes_file", "card")
_TEXTS = ("arch", "device", "class_column")


@dataclass(frozen=True)
class TrainRequest(JsonRequest):
    """A training run: `geoddu train`'s options by their field names (``--output`` is
    ``run_dir``, ``--model`` ``init_model``, ``--classes`` ``num_classes``)."""

    run_dir: str
    # -- the data
    dataset: str | None = checked(Check(choices=DATASETS))
    data: str | None = None
    patch_size: int | None = checked(Check(low=16, integer=True))
    val_fraction: float | None = checked(_FRACTION)
    test_fraction: float | None = checked(_FRACTION)
    classes_file: str | None = None
    class_column: str | None = None
    bands: tuple[int, ...] | None = None
    keep_unknown: bool = False
    # -- the model: a checkpoint to start from, or an architecture
    init_model: str | None = None
    arch: str | None = None
    encoder: str | None = checked(Check(choices=ENCODERS))
    in_channels: int | None = checked(_CHANNELS)
    num_classes: int | None = checked(Check(low=1, high=MAX_CLASSES, integer=True))
    depth: int | None = checked(Check(low=1, high=MAX_DEPTH, integer=True))
    base_channels: int | None = checked(_CHANNELS)
    comm_features: int | None = checked(Check(low=0, high=MAX_CHANNELS, integer=True))
    communicate: bool | None = None
    up_bias: bool | None = None
    dropout: float | None = checked(_FRACTION)
    encoder_weights: str | None = None
    adapt_bands: bool = False
    freeze_encoder: bool | None = None
    # -- the recipe (geoddu.train.config.TrainConfig)
    epochs: int | None = checked(_COUNT)
    batch_size: int | None = checked(_COUNT)
    subimages: tuple[int, int] | None = None
    lr: float | None = checked(Check(low=0, low_open=True))
    lr_patience: int | None = checked(Check(low=0, integer=True))
    patience: int | None = checked(_COUNT)
    min_epochs: int | None = checked(Check(low=0, integer=True))
    loss: str | None = checked(Check(choices=LOSSES))
    batchnorm: str | None = checked(Check(choices=BATCHNORM_RULES))
    augment: bool | None = None
    seed: int | None = checked(Check(integer=True))
    # -- where it runs
    device: str | None = None
    precision: str | None = checked(Check(choices=PRECISIONS))
    amp: bool | None = None  # the older spelling of precision fp16 (True) / fp32 (False)
    workers: int | None = checked(Check(low=0, integer=True))
    spatial_ranks: int | None = checked(_COUNT)
    deterministic: bool = False
    # -- the model card's user fields: a YAML or JSON file (geoddu.card.read_card_file)
    card: str | None = None
    # -- the run folder
    resume: bool = False
    overwrite: bool = False

    REQUIRED: ClassVar[tuple[str, ...]] = ("run_dir",)
    FLAGS: ClassVar[Mapping[str, str]] = {"run_dir": "--output", "init_model": "--model",
                                          "num_classes": "--classes"}

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalised once, here
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str | os.PathLike):
                    raise GeodduError(f"{self.flag(name)} must be a path, got {value!r}")
                put(self, name, os.fspath(value))
        for name in _TEXTS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise GeodduError(f"{self.flag(name)} must be text, got {value!r}")
        for name, spec in self.__dataclass_fields__.items():
            value = getattr(self, name)
            # spec.type is the annotation as written ("bool | None"): annotations are strings.
            if spec.type.startswith("bool") and value is not None and \
                    not isinstance(value, bool):
                raise GeodduError(f"{self.flag(name)} must be true or false, got {value!r}")
        self.check_fields()
        if self.subimages is not None:
            value = self.subimages
            grid = parse_grid(value) if isinstance(value, str | int | list | tuple) else None
            if grid is None or len(grid) != 2 or not all(
                    isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in grid):
                raise GeodduError(f"subimage grid {value!r}: use P (P x P) or NxM, e.g. 8 or 1x6")
            put(self, "subimages", grid)
        if self.bands is not None:
            bands = tuple(self.bands) if isinstance(self.bands, list | tuple) else None
            if not bands or not all(isinstance(b, int) and not isinstance(b, bool)
                                    for b in bands):
                raise GeodduError(f"--bands must list band numbers, got {self.bands!r}")
            if min(bands) < 1:
                raise GeodduError("--bands: band numbers start at 1")
            put(self, "bands", bands)
        if not self.resume and (self.dataset is None or self.data is None):
            raise GeodduError("give --dataset and --data (or --resume to continue a run)")

    def given(self) -> dict[str, Any]:
        """The fields set (not at their default: None, or False for a flag): what the command
        line would have named."""
        fields = self.__dataclass_fields__
        return {name: getattr(self, name) for name in self.field_names()
                if getattr(self, name) is not fields[name].default}


def parse_grid(value: str | int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """'8' -> (8, 8); '1x6' -> (1, 6) (rows x cols); [1, 6] (JSON) -> (1, 6)."""
    if isinstance(value, list):
        value = tuple(value)
    if value is None or isinstance(value, tuple):
        return value
    if isinstance(value, int):
        return (value, value)
    text = value.lower().replace(" ", "")
    try:
        parts = [int(p) for p in text.split("x")]
    except ValueError as exc:
        raise GeodduError(f"subimage grid {value!r}: use P (P x P) or NxM, e.g. 8 or 1x6") from exc
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < 1:
        raise GeodduError(f"subimage grid {value!r}: use P (P x P) or NxM, e.g. 8 or 1x6")
    return parts[0], parts[1]
