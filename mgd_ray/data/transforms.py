"""Training augmentation with OpenCV: random scale, horizontal flip, random crop, normalisation.

Padding happens on raw pixels (image 0, label 255) before ImageNet normalisation, as in the CPS /
UniMatch reference code, so a padded image pixel becomes (0 - mean) / std after `to_tensor`.
Random draws come from a torch generator (torch's global one by default, which DataLoader seeds
per worker) so that workers never share a random stream.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .io import IGNORE_INDEX

SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0


def _randint(high: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, high)."""
    return int(torch.randint(high, (1,), generator=generator).item())


def rescale(image: np.ndarray, label: np.ndarray | None, scale: float):
    """Resize by `scale`: bilinear for the image, nearest for the label (ids must not blend)."""
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    if label is not None:
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
    return image, label


def pad_to(image: np.ndarray, label: np.ndarray | None, size: int):
    """Pad bottom / right up to at least size x size: image with 0, label with the ignore index."""
    height, width = image.shape[:2]
    bottom, right = max(0, size - height), max(0, size - width)
    if bottom or right:
        image = cv2.copyMakeBorder(image, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        if label is not None:
            label = cv2.copyMakeBorder(label, 0, bottom, 0, right, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, label


def augment(image: np.ndarray, label: np.ndarray | None, crop_size: int,
            generator: torch.Generator | None = None):
    """RGB uint8 H x W x 3 (+ uint8 H x W label or None) -> crop_size x crop_size versions after a
    random scale from SCALES, a horizontal flip with probability 1/2 and a random crop."""
    if label is not None and label.shape != image.shape[:2]:
        raise ValueError(f"augment: label {label.shape} and image {image.shape[:2]} sizes differ")
    image, label = rescale(image, label, SCALES[_randint(len(SCALES), generator)])
    if _randint(2, generator):
        image = image[:, ::-1]
        label = None if label is None else label[:, ::-1]
    image, label = pad_to(image, label, crop_size)
    height, width = image.shape[:2]
    top = _randint(height - crop_size + 1, generator)
    left = _randint(width - crop_size + 1, generator)
    window = (slice(top, top + crop_size), slice(left, left + crop_size))
    image = np.ascontiguousarray(image[window])
    label = None if label is None else np.ascontiguousarray(label[window])
    return image, label


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """RGB uint8 H x W x 3 -> ImageNet-normalised float32 3 x H x W."""
    normalised = (image.astype(np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))
