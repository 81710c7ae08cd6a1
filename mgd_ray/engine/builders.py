"""What an engine run builds its networks and its data with, passed in rather than looked up:
the real builders by default, and anything with their signatures in their place (tiny networks
and sets in tests), as detectron2's trainers take `build_model` and torchvision's references
their `get_model`.

    model(arch, num_classes, output_stride=None, backbone_weights=None) -> nn.Module
    datasets(DataConfig) -> Datasets (data.build_datasets)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..data import build_datasets
from ..models import build_model


@dataclass(frozen=True)
class Builders:
    model: Callable[..., nn.Module] = build_model
    datasets: Callable[..., Any] = build_datasets


REAL = Builders()
