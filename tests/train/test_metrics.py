import math

import numpy as np
import pytest
import torch

from geoddu.metrics import IoUAccumulator, dice_loss


def test_dice_loss_by_hand():
    # Two pixels, two classes; logits chosen so that softmax gives (0.8, 0.2) and (0.3, 0.7).
    p = torch.tensor([[0.8, 0.2], [0.3, 0.7]])
    logits = torch.log(p).T.reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])
    # sum y*yhat = 0.8 + 0.3 = 1.1; sum y = 2; sum yhat = 2
    expected = 1 - 2 * (1.1 + 1e-7) / (2 + 2 + 1e-7)
    assert dice_loss(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_dice_loss_ignores_pixels_and_is_zero_for_perfect_prediction():
    logits = torch.tensor([[[[50.0, -50.0]], [[-50.0, 50.0]]]])
    assert dice_loss(logits, torch.tensor([[[0, 1]]])).item() == pytest.approx(0, abs=1e-6)
    # the wrongly predicted second pixel is ignored, so only the perfect first one counts
    assert dice_loss(logits, torch.tensor([[[0, 0]]]), ignore_index=None).item() > 0.4
    assert dice_loss(logits, torch.tensor([[[0, 7]]]), ignore_index=7).item() == pytest.approx(
        0, abs=1e-6
    )
    assert dice_loss(logits, torch.tensor([[[0, 9]]]), ignore_index=9).item() == pytest.approx(
        0, abs=1e-6
    )


def test_iou_accumulates_over_the_dataset_not_per_image():
    acc = IoUAccumulator(3)
    acc.update(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]))  # image 1
    acc.update(np.array([2, 2]), np.array([2, 0]))  # image 2
    # class 0: TP 1, FP 1 (img1 px1? no) -> confusion by hand:
    # pairs (t,p): (0,0) (1,0) (1,1) (1,1) (2,2) (0,2)
    # class 0: TP1, FN1 (0->2), FP1 (1->0) -> 1/3; class 1: TP2, FN1 -> 2/3;
    # class 2: TP1, FP1 -> 1/2
    np.testing.assert_allclose(acc.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert acc.miou() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)


def test_iou_ignored_class_and_absent_class():
    acc = IoUAccumulator(3, ignore_index=2)
    acc.update(np.array([0, 1, 0]), np.array([0, 2, 0]))
    iou = acc.iou()
    assert iou[0] == 1.0 and math.isnan(iou[1]) and math.isnan(iou[2])
    assert acc.miou() == 1.0
