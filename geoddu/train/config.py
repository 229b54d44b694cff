"""Training hyperparameters, with the paper's defaults per dataset (Tables VI and X)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import GeodduError
from ..parallel import PRECISIONS
from .batchnorm import RULES
from .request import parse_grid  # noqa: F401 - defined with the request (no torch there)


@dataclass
class TrainConfig:
    """Everything that shapes a training run besides the data and the architecture."""

    epochs: int = 100
    batch_size: int = 12
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    # ReduceLROnPlateau on the validation loss: multiply by lr_factor after lr_patience epochs
    # without improvement (the paper halves it, Sec. III-C).
    lr_factor: float = 0.5
    lr_patience: int = 5
    # Early stopping: stop after `patience` epochs without a better validation loss, but never
    # before `min_epochs`.
    patience: int = 15
    min_epochs: int = 30
    dropout: float = 0.1
    # "class-dice" (Eq. 1 per class, the default) or "dice" (Eq. 1 as one global ratio); see
    # geoddu.train.losses for why.
    loss: str = "class-dice"
    # Random horizontal/vertical flips and 90-degree rotations (180 only for non-square patches).
    augment: bool = True
    # Subimage grid (rows, cols) per global patch; None: the dataset's own (synthetic: 1 x k).
    subimages: tuple[int, int] | None = (8, 8)
    seed: int = 0
    device: str = "cpu"
    # The training step's precision: "fp32"; "bf16" (autocast bfloat16, float32 master
    # weights, BatchNorm statistics and gradient sums; the CPU's and recent GPUs'); "fp16"
    # (autocast float16 with gradient scaling; CUDA only). None: fp16 on CUDA, fp32 on the CPU.
    precision: str | None = None
    # The older spelling: True = fp16 on CUDA (ignored on the CPU, as it always was), False =
    # fp32; None = `precision` decides.
    amp: bool | None = None
    # BatchNorm statistics in training: "pooled" over every subimage of every patch in the
    # batch (geoddu's rule, what spatial ranks reproduce) or "per-subimage" (the paper's
    # reference code: each subimage normalised over the batch's patches alone). Inference uses
    # the running statistics either way. See docs/training.md.
    batchnorm: str = "pooled"
    workers: int = 0
    # Bit-identical weights from two runs of the same command: deterministic kernels, one
    # intra-op thread, seeded workers (geoddu.train.determinism says what it costs).
    deterministic: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, not tuples) for checkpoints and logs."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["subimages"] = list(self.subimages) if self.subimages else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        if data.get("betas") is not None:
            data["betas"] = tuple(data["betas"])
        if data.get("subimages") is not None:
            data["subimages"] = tuple(data["subimages"])
        return cls(**data)

    def check(self) -> TrainConfig:
        if self.epochs < 1 or self.batch_size < 1:
            raise GeodduError("epochs and batch size must be at least 1")
        if self.lr <= 0:
            raise GeodduError("the learning rate must be positive")
        if not 0 <= self.dropout < 1:
            raise GeodduError("dropout must be in [0, 1)")
        from .losses import get_loss

        get_loss(self.loss)
        if self.batchnorm not in RULES:
            raise GeodduError(f"unknown BatchNorm rule {self.batchnorm!r}; choose from "
                              f"{', '.join(RULES)}")
        if self.subimages is not None and min(self.subimages) < 1:
            raise GeodduError("the subimage grid needs at least 1 x 1 subimages")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise GeodduError(f"unknown precision {self.precision!r}; choose from "
                              f"{', '.join(PRECISIONS)}")
        if self.precision is not None and self.amp is not None:
            raise GeodduError("give --precision or its older spelling --amp/--no-amp, not both")
        return self

    def precision_on(self, device: str) -> str:
        """The precision a step runs in on a `device` of this type ("cpu", "cuda")."""
        if self.precision is not None:
            precision = self.precision
        elif device == "cuda" and self.amp is not False:
            precision = "fp16"
        else:
            precision = "fp32"
        if precision == "fp16" and device == "cpu":
            raise GeodduError("--precision fp16 needs a CUDA device; on the CPU use bf16 or "
                              "fp32")
        return precision


# Table VI (DeepGlobe): lr 0.001, 100 epochs, dropout 0.1, batch 12, dice loss. The paper gives
# no patience or minimum epoch count for DeepGlobe; those below are ours.
# Table X (synthetic): lr 0.008, at most 40 epochs, early stopping patience 8, LR decay patience
# 3, minimum stopping epoch 20, dropout 0.1, batch 16, dice loss. No augmentation is mentioned
# for the synthetic set (Sec. V-B introduces it for DeepGlobe).
PRESETS: dict[str, dict[str, Any]] = {
    "deepglobe": dict(epochs=100, batch_size=12, lr=1e-3, lr_patience=5, patience=15,
                      min_epochs=30, dropout=0.1, augment=True, subimages=(8, 8)),
    "synthetic": dict(epochs=40, batch_size=16, lr=8e-3, lr_patience=3, patience=8,
                      min_epochs=20, dropout=0.1, augment=False, subimages=None),
    "folder": dict(epochs=100, batch_size=12, lr=1e-3, lr_patience=5, patience=15,
                   min_epochs=30, dropout=0.1, augment=True, subimages=(4, 4)),
}


def preset(dataset: str, **overrides: Any) -> TrainConfig:
    """The defaults for `dataset`, with every non-None override applied."""
    if dataset not in PRESETS:
        raise GeodduError(f"no training defaults for dataset {dataset!r}")
    values = dict(PRESETS[dataset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).check()
