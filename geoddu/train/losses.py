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

Both are written as *sums over pixels* followed by a *finish* on the sums. A batch spread over
ranks (data parallel, or a patch's subimages on several ranks) gets the single-process loss by
adding the ranks' sums before finishing (`DiceLoss(..., reduce=all_reduce_sum)`), so training
under torchrun optimises exactly the loss one process would.
"""

from __future__ import annotations

import torch

from ..errors import GeodduError
from ..metrics import EPS, DiceLoss


def class_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    eps: float = EPS,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """Mean over present classes k of 1 - 2 (sum_p y_kp yhat_kp + eps) / (sum_p y_kp +
    sum_p yhat_kp + eps), sums over every pixel of the batch; `ignore_index` pixels left out."""
    return DiceLoss(per_class=True, eps=eps)(logits, target, ignore_index)


LOSSES: dict[str, DiceLoss] = {
    "class-dice": DiceLoss(per_class=True),
    "dice": DiceLoss(per_class=False),
}


def get_loss(name: str) -> DiceLoss:
    if name not in LOSSES:
        raise GeodduError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    return LOSSES[name]
