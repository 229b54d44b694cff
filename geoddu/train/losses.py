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

from collections.abc import Callable, Sequence

import torch

from ..errors import GeodduError
from ..metrics import softmax_and_onehot

EPS = 1e-7
Reduce = Callable[[torch.Tensor], torch.Tensor]


class DiceLoss:
    """`loss(logits, target)` for one batch, or for lists of pieces (a rank's subimages) whose
    sums are added; `reduce` adds the sums of every rank holding a piece of the batch."""

    def __init__(self, per_class: bool, eps: float = EPS) -> None:
        self.per_class, self.eps = per_class, eps

    def sums(
        self, logits: torch.Tensor, target: torch.Tensor, ignore_index: int | None = None
    ) -> torch.Tensor:
        """(3, K) per class or (3,) overall, float64: sum y*yhat, sum y, sum yhat."""
        probs, onehot = softmax_and_onehot(logits, target, ignore_index)
        dims = (0, 2, 3) if self.per_class else (0, 1, 2, 3)
        return torch.stack(
            [(onehot * probs).sum(dims), onehot.sum(dims), probs.sum(dims)]
        ).to(torch.float64)

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
