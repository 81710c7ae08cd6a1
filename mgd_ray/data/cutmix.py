"""CutMix box masks for MGD's mixed unlabeled image x_m = (1 - M) * u0 + M * u1, drawn as the
official `mask_gen.BoxMaskGenerator` draws them with the configs' settings (prop_range (0.25, 0.5),
3 boxes, random aspect ratio, area proportions, within bounds, inverted: the mask starts at 0).

Each box has its own area proportion p ~ U(0.25, 0.5), split as height fraction
p^U(0,1) and width fraction p / (height fraction), both times sqrt(1/3): a box covers p/3 of the
image. Boxes lie inside the image and flip the mask where they overlap (XOR), so the mean mixed
area is about 0.25, not the 0.375 that three disjoint boxes would cover.
"""

from __future__ import annotations

import math

import torch

AREA_RANGE = (0.25, 0.5)
NUM_BOXES = 3


def cutmix_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    num_boxes: int = NUM_BOXES,
    area_range: tuple[float, float] = AREA_RANGE,
) -> torch.Tensor:
    """n x num_boxes x 4 int64 boxes (top, left, bottom, right), bottom/right exclusive, drawn as
    the official generator draws them (see the module docstring)."""
    low, high = area_range
    if not 0.0 < low <= high <= 1.0:
        raise ValueError(f"area_range={area_range!r}: expected 0 < low <= high <= 1")
    if num_boxes < 1 or n < 0 or height < 1 or width < 1:
        raise ValueError(
            f"cutmix_boxes(n={n}, height={height}, width={width}, num_boxes={num_boxes}): "
            "expected n >= 0 and positive sizes"
        )
    shape = torch.tensor([height, width], dtype=torch.float64)
    area = low + (high - low) * torch.rand(n, num_boxes, generator=generator, dtype=torch.float64)
    y_frac = torch.exp(
        torch.rand(n, num_boxes, generator=generator, dtype=torch.float64) * torch.log(area)
    )
    x_frac = area / y_frac
    scale = math.sqrt(1.0 / num_boxes)
    sizes = torch.round(torch.stack([y_frac, x_frac], dim=2) * scale * shape)  # n x boxes x 2
    corners = torch.round(
        (shape - sizes) * torch.rand(n, num_boxes, 2, generator=generator, dtype=torch.float64)
    )
    return torch.cat([corners, corners + sizes], dim=2).long()


def cutmix_mask(
    n: int, height: int, width: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float n x H x W mask of {0, 1}, 1 where u1 shows: three boxes per image (cutmix_boxes),
    XOR where they overlap. Deterministic given the generator's state."""
    boxes = cutmix_boxes(n, height, width, generator)
    top, left, bottom, right = (boxes[..., i, None] for i in range(4))  # n x boxes x 1
    rows = (torch.arange(height) >= top) & (torch.arange(height) < bottom)  # n x boxes x H
    cols = (torch.arange(width) >= left) & (torch.arange(width) < right)  # n x boxes x W
    # How many boxes cover each pixel (a sum of outer products); odd = inside the XOR of the boxes.
    covered = torch.bmm(rows.transpose(1, 2).float(), cols.float())
    return covered.remainder_(2)


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1 - M) * a + M * b with M B x H x W broadcast over channels (a, b B x C x H x W)."""
    m = mask.unsqueeze(1).to(a.dtype)
    return (1 - m) * a + m * b
