"""The two readings of the paper's dice loss (Eq. 1).

* "dice": Eq. 1 as printed, one ratio whose sums run over all pixels *and all classes*
  (`geoddu.metrics.dice_loss`). With softmax outputs its denominator is the constant 2P, so it
  is 1 minus the mean probability of the true class: a soft pixel accuracy. A rare class (the
  synthetic set's line, ~3 % of pixels) is then worth ~3 % of the loss, and once its logits
  saturate the gradient vanishes: in our runs DDU-Net(3,32,Y)'s validation line IoU stayed
  0.000 for all 15 epochs with it.
* "class-dice" (default): the same ratio with the sums taken per class and the losses averaged
  over the classes present in the batch (segmentation-models-pytorch's multiclass DiceLoss).
  This is the form that "addresses the issue of class imbalance" as the paper says its dice loss
  does (Sec. III-C), and with it the line class trains.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import GeodduError
from ..metrics import dice_loss, softmax_and_onehot


def class_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = 1e-7,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Mean over present classes k of 1 - 2 (sum_p y_kp yhat_kp + eps) / (sum_p y_kp +
    sum_p yhat_kp + eps), sums over every pixel of the batch; `ignore_index` pixels left out."""
    probs, onehot = softmax_and_onehot(logits, target, ignore_index)
    dims = (0, 2, 3)
    inter = (onehot * probs).sum(dims)
    counts = onehot.sum(dims)
    dice = 2 * (inter + eps) / (counts + probs.sum(dims) + eps)
    present = counts > 0
    if not bool(present.any()):
        return (probs * 0).sum()  # nothing labelled: zero loss, still part of the graph
    return 1 - dice[present].mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "class-dice": class_dice_loss,
    "dice": dice_loss,
}


def get_loss(name: str) -> Callable[..., torch.Tensor]:
    if name not in LOSSES:
        raise GeodduError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]
