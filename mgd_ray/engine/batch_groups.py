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
import torch.nn.functional as F
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
    n = x.shape[0]
    if n % groups:
        raise ValueError(f"batch_groups: a batch of {n} cannot be split into {groups} equal groups")
    group = getattr(bn, "process_group", None)
    synced = (sync or isinstance(bn, nn.SyncBatchNorm)) and dist.is_available() and dist.is_initialized() \
        and dist.get_world_size(group) > 1
    if synced:
        return _synced_grouped_batch_norm(bn, x, groups, group)
    # One native (fused) train-mode BN call per group, each updating the running statistics in turn
    # as a forward of that group alone would; the concatenation is the only extra pass over the data.
    # (Measured on CPU, R101 teacher forward over 4 named batches: 1.17x the eval-mode batched forward,
    # against 2.2x for statistics by var_mean and a fused scale-and-shift.)
    track = bn.track_running_stats and bn.running_mean is not None
    outs = [F.batch_norm(chunk, bn.running_mean if track else None, bn.running_var if track else None,
                         bn.weight, bn.bias, True, _momentum(bn) if track else 0.0, bn.eps)
            for chunk in x.chunk(groups)]
    return torch.cat(outs)


def _momentum(bn) -> float:
    """The running-average factor of one forward, as _BatchNorm.forward computes it."""
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)


def _synced_grouped_batch_norm(bn, x: torch.Tensor, groups: int, group) -> torch.Tensor:
    """Per-group statistics combined over the ranks of `group` (differentiably), then one fused
    scale-and-shift."""
    n, channels = x.shape[:2]
    grouped = x.view(groups, n // groups, *x.shape[1:])
    dims = (1, *range(3, grouped.dim()))
    var, mean = torch.var_mean(grouped.float(), dim=dims, unbiased=False)  # G x C
    mean, var, count = _gathered_stats(mean, var, grouped[0, :, 0].numel(), group)
    if bn.track_running_stats and bn.running_mean is not None:
        _update_running_stats(bn, mean.detach(), var.detach(), count)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.float()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.float()
    shape = (groups, 1, channels) + (1,) * (x.dim() - 2)
    out = torch.addcmul(shift.view(shape).to(x.dtype), grouped, scale.view(shape).to(x.dtype))
    return out.reshape(x.shape)


def _update_running_stats(bn, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """As `groups` consecutive train-mode forwards would: one momentum step per group, in order."""
    unbiased = var * (count / max(count - 1, 1))
    with torch.no_grad():
        for g in range(mean.shape[0]):
            momentum = _momentum(bn)
            if momentum:
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
