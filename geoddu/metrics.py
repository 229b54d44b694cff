"""Dice loss (Eq. 1, as pixel sums that ranks can add) and dataset-wide IoU / mIoU (Eqs. 2, 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-7,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """DL = 1 - 2 (sum_p sum_k y_kp yhat_kp + eps) / (sum y + sum yhat + eps).

    `logits` (B, K, H, W), `target` (B, H, W) class ids. Sums run over every pixel of the batch
    and every class at once, as in Eq. (1). Pixels labelled `ignore_index` are left out of all
    three sums.
    """
    return DiceLoss(per_class=False, eps=eps)(logits, target, ignore_index)


def softmax_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities and one-hot labels (B, K, H, W), both zero on ignored pixels: the
    terms every reading of the Dice loss sums."""
    probs = torch.softmax(logits.float(), dim=1)
    valid = None
    if ignore_index is not None:
        valid = target != ignore_index
        target = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(target.long(), logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    if valid is not None:
        mask = valid.unsqueeze(1).to(probs.dtype)
        probs = probs * mask
        onehot = onehot * mask
    return probs, onehot


EPS = 1e-7
Reduce = Callable[[torch.Tensor], torch.Tensor]


class DiceLoss:
    """Eq. (1) as pixel sums and a finish on them (per class with `per_class`: see
    `geoddu.train.losses`). `loss(logits, target)` for one batch, or for lists of pieces (a
    rank's subimages) whose sums are added; `reduce` adds the sums of every rank holding a
    piece of the batch, so ranks get the loss one process would."""

    def __init__(self, per_class: bool, eps: float = EPS) -> None:
        self.per_class, self.eps = per_class, eps

    def sums(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
    ) -> torch.Tensor:
        """(3, K) per class or (3,) overall, float64: sum y*yhat, sum y, sum yhat. Each row's
        (patch's) sums are added in float64, so the sums of a batch do not depend on how its
        rows are split into pieces (ranks, subimages) to the last bits."""
        probs, onehot = softmax_and_onehot(logits, target, ignore_index)
        dims = (2, 3) if self.per_class else (1, 2, 3)
        rows = torch.stack([(onehot * probs).sum(dims), onehot.sum(dims), probs.sum(dims)])
        return rows.to(torch.float64).sum(1)

    def finish(self, sums: torch.Tensor) -> torch.Tensor:
        inter, counts, psum = sums[0], sums[1], sums[2]
        dice = 2 * (inter + self.eps) / (counts + psum + self.eps)
        if not self.per_class:
            return (1 - dice).to(torch.float32)
        present = counts > 0
        if not bool(present.any()):
            return (sums * 0).sum().to(torch.float32)  # nothing labelled: zero, still a graph
        return (1 - dice[present].mean()).to(torch.float32)

    def __call__(
        self,
        logits: torch.Tensor | Sequence[torch.Tensor],
        target: torch.Tensor | Sequence[torch.Tensor],
        ignore_index: int | None = None,
        reduce: Reduce | None = None,
    ) -> torch.Tensor:
        if isinstance(logits, torch.Tensor):
            total = self.sums(logits, target, ignore_index)
        else:
            parts = [self.sums(lg, tg, ignore_index)
                     for lg, tg in zip(logits, target, strict=True)]
            total = torch.stack(parts).sum(0)
        if reduce is not None:
            total = reduce(total)
        return self.finish(total)


class IoUAccumulator:
    """Per-class IoU accumulated over a whole dataset (not averaged per image), Eq. (2).

    IoU_k = TP_k / (TP_k + FP_k + FN_k) with counts summed over all images; mIoU (Eq. 3) is the
    mean over the classes that are not ignored and that occur in the labels or predictions.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> None:
        pred = _np(pred).ravel().astype(np.int64)
        target = _np(target).ravel().astype(np.int64)
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            # Ignored pixels count neither as hits nor as misses of any class.
            keep &= target != self.ignore_index
        idx = target[keep] * self.num_classes + pred[keep]
        self.confusion += np.bincount(idx, minlength=self.num_classes**2).reshape(
            self.num_classes, self.num_classes
        )

    def iou(self) -> np.ndarray:
        """IoU per class; NaN where a class never occurs in labels or predictions."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(union > 0, tp / union, np.nan)
        if self.ignore_index is not None and 0 <= self.ignore_index < self.num_classes:
            out[self.ignore_index] = np.nan
        return out

    def miou(self) -> float:
        vals = self.iou()
        vals = vals[~np.isnan(vals)]
        return float(vals.mean()) if vals.size else float("nan")


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
