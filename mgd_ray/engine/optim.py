"""SGD with the DeepLab / CPS conventions: momentum 0.9, weight decay except on BN and biases, and
a poly learning-rate schedule stepped every iteration."""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..config import OptimConfig


def param_groups(models: Iterable[nn.Module], weight_decay: float) -> list[dict]:
    """Two groups over the trainable parameters of `models`: weights of convolutions and linear
    layers (decayed) and 1-D tensors, i.e. BatchNorm scales/shifts and biases (not decayed:
    decaying them only shrinks normalisation and offsets, which regularises nothing useful)."""
    decay, no_decay = [], []
    seen: set[int] = set()
    for model in models:
        for param in model.parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if param.ndim <= 1 else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(models: Iterable[nn.Module], cfg: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        param_groups(models, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum
    )


def poly_lr(
    base_lr: float, iteration: int, max_iterations: int, power: float = 0.9, warmup: int = 0
) -> float:
    """base_lr * (1 - iteration / max_iterations) ** power, for iteration 0 .. max_iterations - 1,
    scaled by (iteration + 1) / warmup over the first `warmup` iterations (linear warm-up, which
    keeps deep networks trained from scratch from blowing up in their first steps)."""
    progress = min(max(iteration, 0), max_iterations) / max_iterations
    ramp = min(1.0, (iteration + 1) / warmup) if warmup > 0 else 1.0
    return base_lr * ramp * (1.0 - progress) ** power


def lr_at(cfg: OptimConfig, iteration: int, max_iterations: int) -> float:
    """The learning rate of `iteration` under `cfg` (poly decay after the warm-up)."""
    return poly_lr(cfg.lr, iteration, max_iterations, cfg.poly_power, cfg.warmup_iterations)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def clip_gradients(optimizer: torch.optim.Optimizer, max_norm: float | None) -> None:
    """Clip the global gradient norm over every parameter the optimizer steps (None = off)."""
    if max_norm is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
