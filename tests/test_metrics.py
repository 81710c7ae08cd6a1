"""Confusion matrix and mIoU against an independent per-class computation."""

import numpy as np
import pytest
import torch

from mgd_ray.metrics import confusion_matrix, mean_iou


def _reference_iou(pred: np.ndarray, target: np.ndarray, num_classes: int) -> list[float]:
    valid = target != 255
    ious = []
    for c in range(num_classes):
        inter = np.logical_and(pred == c, target == c)[valid].sum()
        union = np.logical_or(pred == c, target == c)[valid].sum()
        ious.append(inter / union if union else float("nan"))
    return ious


def test_hand_computed_example():
    target = torch.tensor([[0, 0, 1, 255]])
    pred = torch.tensor([[0, 1, 1, 1]])
    conf = confusion_matrix(pred, target, num_classes=3)
    assert conf.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    result = mean_iou(conf)
    assert result["iou"][:2].tolist() == [0.5, 0.5] and np.isnan(result["iou"][2])
    assert result["miou"] == 0.5
    assert result["pixel_accuracy"] == pytest.approx(2 / 3)


def test_against_independent_computation_accumulated_over_batches():
    gen = torch.Generator().manual_seed(0)
    num_classes = 5
    preds = [torch.randint(0, num_classes, (2, 7, 9), generator=gen) for _ in range(3)]
    targets = [torch.randint(0, num_classes, (2, 7, 9), generator=gen) for _ in range(3)]
    for t in targets:
        t[torch.rand(t.shape, generator=gen) < 0.2] = 255
    total = sum(confusion_matrix(p, t, num_classes) for p, t in zip(preds, targets))
    assert total.dtype == torch.int64 and total.shape == (num_classes, num_classes)
    assert int(total.sum()) == sum(int((t != 255).sum()) for t in targets)
    expected = _reference_iou(torch.cat(preds).numpy(), torch.cat(targets).numpy(), num_classes)
    result = mean_iou(total)
    np.testing.assert_allclose(result["iou"], expected)
    assert result["miou"] == pytest.approx(float(np.nanmean(expected)))


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ"):
        confusion_matrix(torch.zeros(2, 2), torch.zeros(2, 3), 2)
    with pytest.raises(ValueError, match="target values outside"):
        confusion_matrix(torch.zeros(1, 2, dtype=torch.long), torch.tensor([[0, 7]]), 2)
    with pytest.raises(ValueError, match="C x C"):
        mean_iou(np.zeros((2, 3)))
