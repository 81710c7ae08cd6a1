"""What running on a GPU changes in the engine: bf16 autocast and channels_last memory layout.
On the CPU both are off (they buy nothing there), so every caller can use them unconditionally."""
from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled (no loss scaling needed for bf16); fp32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device, image: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    # channels_last speeds up cuDNN convolutions under autocast; on CPU it buys nothing here.
    return x.contiguous(memory_format=torch.channels_last) if image and device.type == "cuda" else x


def channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in channels_last layout when it will run on CUDA (to match to_device's images)."""
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model
