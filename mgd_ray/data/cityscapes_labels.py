"""The official Cityscapes labelId -> trainId mapping (cityscapesScripts/helpers/labels.py)."""

from __future__ import annotations

import numpy as np

from ..schema import IGNORE_INDEX

# labelId -> trainId from cityscapesScripts/helpers/labels.py; ids not listed (ego vehicle,
# parking, rail track, guard rail, ...) are not evaluated and become the ignore index.
LABEL_ID_TO_TRAIN_ID = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}
MAX_LABEL_ID = 33  # the largest id in the official table (license plate, -1, is never stored)

_LOOKUP = np.full(256, IGNORE_INDEX, dtype=np.uint8)
for _label_id, _train_id in LABEL_ID_TO_TRAIN_ID.items():
    _LOOKUP[_label_id] = _train_id


def cityscapes_label_to_train_id(label: np.ndarray) -> np.ndarray:
    """Raw gtFine labelIds (any integer array, H x W) -> uint8 train ids 0..18, 255 elsewhere."""
    label = np.asarray(label)
    if not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"cityscapes label: expected an integer array, got {label.dtype}")
    out = np.full(label.shape, IGNORE_INDEX, dtype=np.uint8)
    inside = (label >= 0) & (label <= 255)
    out[inside] = _LOOKUP[label[inside].astype(np.intp)]
    return out
