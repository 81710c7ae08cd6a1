"""Segmentation metrics from a confusion matrix accumulated over a whole validation set.

mIoU is computed once from the summed counts (never averaged over images or batches), which is
what makes it independent of how the set was split across batches and ranks.
"""

from __future__ import annotations

import numpy as np
import torch

from .schema import IGNORE_INDEX


def confusion_matrix(
    pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """C x C int64 counts, rows = ground truth, columns = prediction, over pixels whose target is
    not `ignore_index`. pred and target: integer tensors of the same shape (e.g. B x H x W)."""
    if pred.shape != target.shape:
        raise ValueError(
            f"confusion_matrix: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    valid = target != ignore_index
    pred, target = pred[valid], target[valid]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(
            f"confusion_matrix: target values outside 0..{num_classes - 1} and {ignore_index}"
        )
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= num_classes):
        raise ValueError(f"confusion_matrix: predictions outside 0..{num_classes - 1}")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor | np.ndarray) -> dict:
    """{"iou": per-class IoU (np.ndarray, NaN for a class absent from both ground truth and
    predictions), "miou": mean over the other classes (0.0 if none), "pixel_accuracy": float}."""
    conf = (
        confusion.detach().cpu().numpy()
        if isinstance(confusion, torch.Tensor)
        else np.asarray(confusion)
    )
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"mean_iou: expected a C x C confusion matrix, got shape {conf.shape}")
    conf = conf.astype(np.float64)
    true_positive = np.diag(conf)
    union = conf.sum(axis=0) + conf.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, true_positive / union, np.nan)
    present = ~np.isnan(iou)
    total = conf.sum()
    return {
        "iou": iou,
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else 0.0,
    }
