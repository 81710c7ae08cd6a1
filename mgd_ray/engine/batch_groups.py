"""Batch-norm per named batch inside one batched forward.

The official code runs each named batch (u0, u1, x_l, x_m for a teacher; x_m and x_l for the student)
through its own forward with train-mode BN, so each batch is normalised with its own statistics.
One forward over the concatenated batches with `batch_groups(model, groups)` active gives the same
outputs (and, with gradients, the same gradients) with fewer, larger kernels: every BatchNorm of the
model splits its input into `groups` equal consecutive slices of the batch and normalises each
slice with the slice's own mean and variance.

Running statistics are updated as `groups` consecutive forwards would update them (nothing changes
for a frozen teacher, whose BN momentum is 0). A SyncBatchNorm (multi-GPU student), or any BN when
`sync=True`, combines each group's statistics over the ranks of the process group, as SyncBatchNorm
does for a whole batch: the official networks use SyncBatchNorm, so a named batch is normalised over
the images of all GPUs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
from torch import nn


def _gathered_stats(mean: torch.Tensor, var: torch.Tensor, count: int, group) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Combine per-rank (mean, biased var) of G x C statistics over the ranks, differentiably."""
    from torch.distributed.nn.functional import all_gather  # autograd-aware

    world = dist.get_world_size(group)
    means = torch.stack(all_gather(mean.contiguous(), group=group))  # world x G x C
    variances = torch.stack(all_gather(var.contiguous(), group=group))
    # Every rank holds the same number of images per group (the same per-device batch).
    total_mean = means.mean(dim=0)
    total_var = (variances + (means - total_mean) ** 2).mean(dim=0)
    return total_mean, total_var, count * world


def grouped_batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, groups: int,
                       sync: bool = False) -> torch.Tensor:
    """Train-mode BN of x (N x C x ...) with statistics per group of N / groups consecutive images."""
    n, channels = x.shape[:2]
    if n % groups:
        raise ValueError(f"batch_groups: a batch of {n} cannot be split into {groups} equal groups")
    grouped = x.view(groups, n // groups, channels, *x.shape[2:])
    dims = (1, *range(3, grouped.dim()))
    var, mean = torch.var_mean(grouped.float(), dim=dims, unbiased=False)  # G x C
    count = grouped[0, :, 0].numel()
    group = getattr(bn, "process_group", None)
    if (sync or isinstance(bn, nn.SyncBatchNorm)) and dist.is_available() and dist.is_initialized() \
            and dist.get_world_size(group) > 1:
        mean, var, count = _gathered_stats(mean, var, count, group)
    if bn.training and bn.track_running_stats:
        _update_running_stats(bn, mean.detach(), var.detach(), count)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    shape = (groups, 1, channels) + (1,) * (x.dim() - 2)
    out = grouped * scale.view(shape).to(x.dtype) + shift.view(shape).to(x.dtype)
    return out.reshape(x.shape)


def _update_running_stats(bn, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """As `groups` consecutive train-mode forwards would: one momentum step per group, in order."""
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        for g in range(mean.shape[0]):
            if bn.num_batches_tracked is not None:
                bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            if momentum == 0:
                continue
            bn.running_mean.lerp_(mean[g].to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_(unbiased[g].to(bn.running_var.dtype), momentum)


@contextmanager
def batch_groups(model: nn.Module, groups: int, sync: bool = False) -> Iterator[nn.Module]:
    """Within the block, every train-mode BatchNorm of `model` normalises each of `groups` equal,
    consecutive slices of its batch with the slice's own statistics (eval-mode BNs are unchanged:
    running statistics treat each image on its own anyway). `sync=True` also combines plain BNs'
    group statistics over the default process group's ranks (SyncBatchNorm always does)."""
    if groups < 1:
        raise ValueError(f"batch_groups: groups={groups}, expected >= 1")
    patched = []
    if groups > 1 or sync:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and "forward" not in module.__dict__:
                def forward(x, bn=module, original=module.forward):
                    if not bn.training:
                        return original(x)
                    return grouped_batch_norm(bn, x, groups, sync)
                module.forward = forward
                patched.append(module)
    try:
        yield model
    finally:
        for module in patched:
            del module.forward


__all__ = ["batch_groups", "grouped_batch_norm"]
