"""Builders: architecture name -> DeepLabv3+ network, and SyncBatchNorm conversion."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .deeplabv3plus import DeepLabV3Plus
from .mobilenetv2 import mobilenet_v2
from .resnet import resnet18, resnet50, resnet101, wide_resnet50_2
from .weights import load_backbone_weights

# Bumped whenever a network's modules change, so that saved weights of an older network (cached
# teachers) are not mistaken for the current one. 2: the official MGD ASPP/decoder and MobileNetV2.
NETWORK_VERSION = 2

# arch -> (backbone builder taking output_stride, default output stride). Students: ResNet-18 at
# 16, MobileNetV2 at 32 (the network the paper's FLOPs are for); teachers: ResNet-101 and WRN-50-2
# at 16.
ARCHS: dict[str, tuple[Callable[[int], nn.Module], int]] = {
    "deeplabv3plus_resnet18": (resnet18, 16),
    "deeplabv3plus_resnet50": (resnet50, 16),
    "deeplabv3plus_resnet101": (resnet101, 16),
    "deeplabv3plus_wide_resnet50_2": (wide_resnet50_2, 16),
    "deeplabv3plus_mobilenetv2": (mobilenet_v2, 32),
}


def default_output_stride(arch: str) -> int:
    return ARCHS[_check_arch(arch)][1]


def _check_arch(arch: str) -> str:
    if arch not in ARCHS:
        raise ValueError(f"arch {arch!r}: expected one of {', '.join(ARCHS)}")
    return arch


def build_model(
    arch: str,
    num_classes: int,
    output_stride: int | None = None,
    backbone_weights: str | None = None,
) -> DeepLabV3Plus:
    """A DeepLabv3+ network: model(x: B x 3 x H x W) -> {"logits": B x C x H x W,
    "features": B x 256 x H/4 x W/4}. `backbone_weights` is a torchvision ImageNet checkpoint file
    (`pretrained.resolve_imagenet_weights(arch)` finds or fetches it), loaded strictly into the
    backbone: every backbone key must be in the file; only the file's classifier (and MobileNetV2's
    features.18, the 1280-channel conv the official student drops) is left unused. The head starts
    from scratch."""
    builder, default_os = ARCHS[_check_arch(arch)]
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r}: expected a positive integer")
    output_stride = default_os if output_stride is None else output_stride
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride={output_stride!r} for {arch}: expected 8, 16 or 32")
    backbone = builder(output_stride)
    if backbone_weights is not None:
        load_backbone_weights(backbone, backbone_weights)
    return DeepLabV3Plus(backbone, num_classes, output_stride)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Every BatchNorm becomes a SyncBatchNorm (statistics over all DDP ranks); call it before DDP.

    Without an initialised process group SyncBatchNorm behaves as plain BatchNorm, so a converted
    model still runs in one process; channels_last inputs pass through unchanged."""
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
