"""Multiply-accumulates and parameters of a network, counted by PyTorch's own FLOP counter.

The network is built on the "meta" device: shapes propagate through every op but nothing is
allocated or computed, so even a ResNet-101 teacher at 512 x 512 is counted in well under a second.
torch.utils.flop_counter counts convolutions and matrix products (2 FLOPs per multiply-accumulate);
BatchNorm, activations, pooling and interpolation are not counted, as in the papers' GFLOPs
figures.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .build import build_model


def count_macs(module: nn.Module, *inputs: torch.Tensor) -> int:
    """Multiply-accumulates of one forward call of `module` on `inputs` (FLOPs / 2)."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        module(*inputs)
    return counter.get_total_flops() // 2


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def complexity(
    arch: str, num_classes: int = 21, size: int = 512, output_stride: int | None = None
) -> dict:
    """MACs (in G) and parameters of the backbone and of the whole network for one size x size
    image.

    Returns {"backbone_gmacs", "total_gmacs", "backbone_params", "total_params",
    "output_stride"}."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 32:
        raise ValueError(f"size={size!r}: expected an integer image side >= 32")
    with torch.device("meta"):
        model = build_model(arch, num_classes, output_stride=output_stride).eval()
        image = torch.empty(1, 3, size, size)
    return {
        "backbone_gmacs": count_macs(model.backbone, image) / 1e9,
        "total_gmacs": count_macs(model, image) / 1e9,
        "backbone_params": count_params(model.backbone),
        "total_params": count_params(model),
        "output_stride": model.output_stride,
    }
