"""CutMix box masks for MGD's mixed unlabeled image x_m = (1 - M) * u0 + M * u1."""
from __future__ import annotations

import math

import torch

# Placing disjoint boxes is a rejection sampler; this bound is never reached for areas <= 1/2
# split over a few boxes, but it keeps the loop finite for extreme arguments.
_MAX_TRIES = 200


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _overlaps(box, boxes) -> bool:
    top, left, bottom, right = box
    return any(top < b and t < bottom and left < r and l < right for t, l, b, r in boxes)


def cutmix_boxes(height: int, width: int, generator: torch.Generator | None = None,
                 num_boxes: int = 3, area_range: tuple[float, float] = (0.25, 0.5)):
    """Boxes (top, left, bottom, right), bottom/right exclusive, for one image: the total area
    fraction is drawn from U(area_range) and split equally among `num_boxes` disjoint boxes of
    random aspect ratio in [1/2, 2], all inside the image."""
    low, high = area_range
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"area_range={area_range!r}: expected 0 < low <= high <= 1")
    if num_boxes < 1:
        raise ValueError(f"num_boxes={num_boxes!r}: expected >= 1")
    box_area = _uniform(low, high, generator) * height * width / num_boxes
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(_MAX_TRIES):
        boxes = []
        for _ in range(num_boxes):
            # Log-uniform aspect ratio so tall and wide boxes are equally likely.
            aspect = math.exp(_uniform(math.log(0.5), math.log(2.0), generator))
            box_h = min(height, max(1, round(math.sqrt(box_area / aspect))))
            box_w = min(width, max(1, round(box_area / box_h)))
            for _ in range(_MAX_TRIES):
                top = int(torch.randint(height - box_h + 1, (), generator=generator))
                left = int(torch.randint(width - box_w + 1, (), generator=generator))
                box = (top, left, top + box_h, left + box_w)
                if not _overlaps(box, boxes):
                    boxes.append(box)
                    break
            else:
                break
        if len(boxes) == num_boxes:
            return boxes
    raise ValueError(
        f"could not place {num_boxes} disjoint boxes of area {box_area:.0f} in {height} x {width}"
    )


def cutmix_mask(batch_size: int, height: int, width: int, generator: torch.Generator | None = None,
                num_boxes: int = 3, area_range: tuple[float, float] = (0.25, 0.5)) -> torch.Tensor:
    """Float B x H x W mask of {0, 1}: 1 inside each image's `num_boxes` boxes (see cutmix_boxes)."""
    mask = torch.zeros(batch_size, height, width)
    for index in range(batch_size):
        for top, left, bottom, right in cutmix_boxes(height, width, generator, num_boxes, area_range):
            mask[index, top:bottom, left:right] = 1.0
    return mask
