"""Training augmentation with OpenCV: random scale, horizontal flip, random crop, normalisation.

As the official code (dataloader.py, furnace/utils/img_utils.py): an image smaller than the crop is
padded CENTRED with 0 of the normalised image, i.e. the ImageNet mean colour (rounded to uint8
here, since normalisation comes last: 0.006 std from 0), and its label with 255.
Random draws come from a torch generator (torch's global one by default, which DataLoader seeds
per worker) so that workers never share a random stream.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from ..schema import IGNORE_INDEX

SCALES = (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32) * 255.0
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32) * 255.0
PAD_COLOUR = tuple(int(round(float(v))) for v in IMAGENET_MEAN)  # (124, 116, 104)


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
    """Pad to at least size x size, centred as the official pad_image_to_shape: image with the mean
    colour (0 once normalised), label with the ignore index."""
    height, width = image.shape[:2]
    pad_h, pad_w = max(0, size - height), max(0, size - width)
    if pad_h or pad_w:
        top, left = pad_h // 2, pad_w // 2
        border = (top, pad_h - top, left, pad_w - left)
        image = cv2.copyMakeBorder(image, *border, cv2.BORDER_CONSTANT, value=PAD_COLOUR)
        if label is not None:
            label = cv2.copyMakeBorder(label, *border, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, label


def augment(
    image: np.ndarray,
    label: np.ndarray | None,
    crop_size: int,
    generator: torch.Generator | None = None,
):
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
