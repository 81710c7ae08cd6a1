"""Reading images and label maps from disk, and the one error type the data layer raises.

Images are read with OpenCV (RGB uint8 H x W x 3). Labels are read with Pillow because VOC's
original `SegmentationClass` PNGs are palette images whose pixel values are the palette indices
(= class ids); OpenCV would expand the palette to colours.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..schema import write_text_atomic

# Per-image decoding is single-threaded; DataLoader workers give the parallelism.
cv2.setNumThreads(1)


class DatasetError(ValueError):
    """A dataset on disk is missing, unreadable or inconsistent; the message names the file."""


def cache_root() -> Path:
    """Where generated data, splits and validation markers live: $MGD_RAY_DATA or
    ~/.cache/mgd_ray."""
    env = os.environ.get("MGD_RAY_DATA")
    return Path(env) if env else Path.home() / ".cache" / "mgd_ray"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Image file -> RGB uint8 H x W x 3; DatasetError if missing or not decodable."""
    path = str(path)
    if not os.path.isfile(path):
        raise DatasetError(f"image {path}: file not found")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetError(f"image {path}: unreadable, expected a JPEG or PNG image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


INDEX_PNG = "a single-channel 8-bit index PNG (grayscale or palette) holding class ids"


def read_label(path: str | os.PathLike) -> np.ndarray:
    """Single-channel label PNG (grayscale or palette) -> uint8 H x W of the stored indices."""
    path = str(path)
    if not os.path.isfile(path):
        raise DatasetError(f"label {path}: file not found")
    return decode_label(path, path)


def decode_label(
    source, name: str, modes: tuple[str, ...] = ("L", "P"), expected: str = INDEX_PNG
) -> np.ndarray:
    """A label PNG (`source`: a path or a binary file object) as uint8 array of its stored values
    (H x W for grayscale or palette images, H x W x 3 for RGB); DatasetError naming `name` when
    it is unreadable or its mode is not one of `modes`."""
    try:
        with Image.open(source) as img:
            if img.mode not in modes:
                raise DatasetError(f"label {name}: PNG mode {img.mode!r}, expected {expected}")
            return np.array(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DatasetError(f"label {name}: unreadable ({exc}), expected {expected}") from exc


def write_label(path: str | os.PathLike, label: np.ndarray) -> None:
    """Write a uint8 H x W label map as a grayscale PNG (the SegmentationClassAug convention)."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(
            f"label for {path}: expected uint8 H x W, got {label.dtype} {label.shape}"
        )
    if not cv2.imwrite(str(path), label):
        raise OSError(f"could not write label {path}")


def read_list(path: str | os.PathLike) -> list[list[str]]:
    """A split list: one entry per non-empty line, each split on whitespace (tab-separated
    pairs)."""
    path = str(path)
    if not os.path.isfile(path):
        raise DatasetError(f"split list {path}: file not found")
    with open(path, encoding="utf-8") as f:
        rows = [line.split() for line in f]
    return [row for row in rows if row]


def write_list(path: str | os.PathLike, rows: list[str]) -> None:
    """Write one line per row atomically (`schema.write_text_atomic`)."""
    write_text_atomic(path, "".join(row + "\n" for row in rows))
