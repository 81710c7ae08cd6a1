"""DeepLabv3+ students and complementary teachers over torchvision-layout backbones."""

from .build import (
    ARCHS,
    NETWORK_VERSION,
    build_model,
    convert_sync_batchnorm,
    default_output_stride,
)
from .flops import complexity
from .weights import load_backbone_weights

__all__ = [
    "ARCHS",
    "NETWORK_VERSION",
    "build_model",
    "complexity",
    "convert_sync_batchnorm",
    "default_output_stride",
    "load_backbone_weights",
]
