"""Validation: single-scale sliding-window inference at full resolution, and mIoU from a confusion
matrix summed over the whole set and over every rank."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from ..config import DistillConfig, TeacherConfig
from ..metrics import confusion_matrix, mean_iou
from .context import all_reduce_sum
from .device import autocast, to_device


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Window offsets along one axis: every `stride`, plus a last one flush with the end so the
    whole length is covered (a length <= window gives the single offset 0)."""
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


@torch.no_grad()
def sliding_window_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    num_classes: int,
    window: int,
    stride: int | None = None,
    windows_per_batch: int = 8,
) -> torch.Tensor:
    """1 x C x H x W logits of a 1 x 3 x H x W image: window x window crops every `stride` pixels
    (default ceil(2/3 window)), logits averaged where windows overlap. An image smaller than the
    window is padded with 0 (the normalised mean colour, as in training crops) and the padding cut
    off."""
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(
            f"sliding_window_logits: expected a 1 x 3 x H x W image, got {tuple(image.shape)}"
        )
    stride = stride or math.ceil(window * 2 / 3)
    height, width = image.shape[-2:]
    padded = F.pad(image, (0, max(window - width, 0), 0, max(window - height, 0)))
    full_h, full_w = padded.shape[-2:]
    boxes = [
        (top, left)
        for top in window_starts(full_h, window, stride)
        for left in window_starts(full_w, window, stride)
    ]
    logits = torch.zeros(1, num_classes, full_h, full_w, device=image.device)
    count = torch.zeros(1, 1, full_h, full_w, device=image.device)
    for first in range(0, len(boxes), windows_per_batch):
        chunk = boxes[first : first + windows_per_batch]
        crops = torch.cat(
            [padded[..., top : top + window, left : left + window] for top, left in chunk]
        )
        out = model(crops)["logits"].float()
        for (top, left), crop_logits in zip(chunk, out):
            logits[0, :, top : top + window, left : left + window] += crop_logits
            count[..., top : top + window, left : left + window] += 1
    return (logits / count)[..., :height, :width]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    crop_size: int,
    device: torch.device,
    amp: bool = False,
) -> dict:
    """mIoU of `model` over a val loader of (image 1 x 3 x H x W, label 1 x H x W, id) batches.

    The confusion matrix is accumulated over every image this rank sees, then summed across ranks
    before IoUs are computed. Returns {"miou", "iou" (list per class), "pixel_accuracy"}; the model
    is put back in the mode it was in."""
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    try:
        for image, label, *_ in loader:
            if image.shape[0] != 1:
                raise ValueError(
                    "evaluate: val batches must hold one image (full resolution), got "
                    f"{image.shape[0]}"
                )
            image, label = to_device(image, device, True), to_device(label, device)
            with autocast(device, amp):
                logits = sliding_window_logits(model, image, num_classes, crop_size)
            confusion += confusion_matrix(logits.argmax(dim=1), label, num_classes)
    finally:
        model.train(was_training)
    result = mean_iou(all_reduce_sum(confusion).cpu())
    return {
        "miou": result["miou"],
        "iou": [float(v) for v in result["iou"]],
        "pixel_accuracy": result["pixel_accuracy"],
    }


def run_miou(
    model: torch.nn.Module,
    loader: DataLoader,
    num_classes: int,
    cfg: TeacherConfig | DistillConfig,
    device: torch.device,
) -> float:
    """The val mIoU of a run's network: `evaluate` at the crop size and AMP setting of the run's
    config."""
    return evaluate(model, loader, num_classes, cfg.data.crop_size, device, cfg.amp)["miou"]
