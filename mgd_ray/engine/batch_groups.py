"""Batch-norm per named batch inside one batched forward.

The official code runs each named batch (u0, u1, x_l, x_m for a teacher; x_m and x_l for the
student) through its own forward with train-mode BN, so each batch is normalised with its own
statistics. One forward over the concatenated batches with `batch_groups(model, groups)` active
gives the same outputs (and, with gradients, the same gradients) with fewer, larger kernels: every
BatchNorm of the model splits its input into `groups` equal consecutive slices of the batch and
normalises each slice with the slice's own mean and variance.

Running statistics are updated as `groups` consecutive forwards would update them, except for a
frozen teacher (BN momentum 0), whose BNs write nothing at all (see `_updates_running_stats`). A
SyncBatchNorm (multi-GPU student), or any BN when `sync=True`, combines each group's statistics
over the ranks of the process group, as SyncBatchNorm does for a whole batch: the official networks
use SyncBatchNorm, so a named batch is normalised over the images of all GPUs.

Two implementations (`impl`), the same numbers:
- "calls": one native train-mode BN call per group and a concatenation;
- "one_pass": one reduction for every group's statistics (float32 or wider, whatever the autocast
  dtype), then one fused scale-and-shift: a fixed number of kernels per BN layer, as a joint BN.
"joint" (one BN over the whole batch: not the paper's statistics) is there to measure their cost.
Unless told, a compiled forward takes "one_pass" and an eager one "calls" (`default_impl`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

IMPLS = ("calls", "one_pass", "joint")


def default_impl() -> str:
    """The per-batch BN implementation when none is chosen: "one_pass" inside a forward that
    torch.compile traces, "calls" in eager mode, on any device.

    Eager, "calls" issues fewer kernels (what a launch-bound GPU step pays for). Per BN layer,
    counted by `benchmarks/batch_norm.py --kernels` (docs/benchmarks.md, section 8): in a no-grad
    teacher with 4 named batches, 4 native BN calls and a concatenation (5 ops) against 6 for
    "one_pass" (8 with bf16 input: casts); in a student's forward + backward with 2, 9 against 33,
    as autograd differentiates the reduction and the scale-and-shift op by op. "calls" is also
    the faster on the 2-core CPU. Compiled, the order flips: inductor fuses "one_pass" into a
    reduction and a pointwise kernel, no more than one joint BN, but lowers each native call of
    "calls" to reductions of its own: for a 2-BN net, 11 generated kernels against 39 without
    grad (joint BN: 15), 26 against 48 with backward (joint: 23).
    """
    return "one_pass" if torch.compiler.is_compiling() else "calls"


def grouped_batch_norm(
    bn: nn.modules.batchnorm._BatchNorm,
    x: torch.Tensor,
    groups: int,
    sync: bool = False,
    impl: str | None = None,
) -> torch.Tensor:
    """Train-mode BN of x (N x C x ...) with statistics per group of N / groups consecutive images.
    `impl` is one of IMPLS (None: `default_impl()`); several ranks always take "one_pass"."""
    n = x.shape[0]
    if n % groups:
        raise ValueError(
            f"batch_groups: a batch of {n} cannot be split into {groups} equal groups"
        )
    impl = impl or default_impl()
    if impl not in IMPLS:
        raise ValueError(f"batch_groups: impl={impl!r}, expected one of {IMPLS}")
    if impl == "joint":
        return _plain_forward(bn, x)
    process_group = getattr(bn, "process_group", None)
    synced = (
        (sync or isinstance(bn, nn.SyncBatchNorm))
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(process_group) > 1
    )
    if synced:
        # Native BN calls cannot combine statistics over ranks; the one-pass path can.
        return _one_pass_batch_norm(bn, x, groups, process_group or dist.group.WORLD)
    if impl == "calls":
        return _per_call_batch_norm(bn, x, groups)
    return _one_pass_batch_norm(bn, x, groups)


def _plain_forward(bn, x: torch.Tensor) -> torch.Tensor:
    """The BN class's own forward, past the per-batch override."""
    if isinstance(bn, _GroupedBatchNorm):
        return super(_GroupedBatchNorm, bn).forward(x)
    return bn.forward(x)


def _updates_running_stats(bn) -> bool:
    """Whether a train-mode forward of `bn` writes its running statistics.

    Momentum 0 is how `freeze(train_mode=True)` marks a frozen teacher: the official forwards would
    still count its batches, but the count only feeds momentum=None, which it does not use, and its
    statistics never move. Writing nothing keeps the teacher a pure function of its input, which
    is what lets its forward be captured and replayed (a CUDA graph); it also saves a kernel per
    BN layer."""
    return bn.track_running_stats and bn.running_mean is not None and bn.momentum != 0


def _momenta(bn, groups: int) -> list[float]:
    """The running-average factor of each of `groups` consecutive forwards, as
    _BatchNorm.forward computes it, counting them in num_batches_tracked."""
    if bn.num_batches_tracked is None:
        return [bn.momentum if bn.momentum is not None else 0.0] * groups
    if bn.momentum is not None:
        bn.num_batches_tracked.add_(groups)
        return [bn.momentum] * groups
    seen = int(bn.num_batches_tracked)  # a host read, as _BatchNorm.forward's float() is
    bn.num_batches_tracked.add_(groups)
    return [1.0 / (seen + g + 1) for g in range(groups)]  # cumulative average


def _per_call_batch_norm(bn, x: torch.Tensor, groups: int) -> torch.Tensor:
    """One native (fused) train-mode BN call per group, each updating the running statistics in
    turn as a forward of that group alone would; the concatenation is the one extra pass."""
    track = _updates_running_stats(bn)
    momenta = _momenta(bn, groups) if track else [0.0] * groups
    running_mean, running_var = (bn.running_mean, bn.running_var) if track else (None, None)
    outs = [
        F.batch_norm(chunk, running_mean, running_var, bn.weight, bn.bias, True, momentum, bn.eps)
        for chunk, momentum in zip(x.chunk(groups), momenta)
    ]
    return torch.cat(outs)


def _one_pass_batch_norm(bn, x: torch.Tensor, groups: int, process_group=None) -> torch.Tensor:
    """Every group's statistics from one reduction over the G x N/G x C x ... view of x (combined
    over the ranks of `process_group`, differentiably, when given), then one fused scale-and-shift
    broadcast over G x 1 x C x 1 x 1."""
    n, channels = x.shape[:2]
    # A view as (N/G, G*C, ...) would be one BN call but mixes the groups; a transpose into that
    # layout is a full copy under channels_last. Reducing over the grouped view copies nothing.
    grouped = x.unflatten(0, (groups, n // groups))
    stat_dtype = torch.promote_types(x.dtype, torch.float32)  # bf16 sums lose the variance
    dims = (1, *range(3, grouped.dim()))
    var, mean = torch.var_mean(grouped.to(stat_dtype), dim=dims, unbiased=False)  # G x C
    count = grouped[0, :, 0].numel()
    if process_group is not None:
        mean, var, count = _gathered_stats(mean, var, count, process_group)
    if _updates_running_stats(bn):
        _update_running_stats(bn, mean.detach(), var.detach(), count)
    scale = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.to(stat_dtype)
    if bn.bias is None:
        shift = -mean * scale
    else:
        shift = torch.addcmul(bn.bias.to(stat_dtype), mean, scale, value=-1)
    shape = (groups, 1, channels) + (1,) * (x.dim() - 2)
    # In stat_dtype, as native BN computes: a bf16 shift (-mean * scale) rounds by far more than
    # the output's own rounding wherever a channel's mean is large against its spread.
    out = torch.addcmul(shift.view(shape), grouped, scale.view(shape)).to(x.dtype)
    return out.flatten(0, 1)


def _gathered_stats(
    mean: torch.Tensor, var: torch.Tensor, count: int, group
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Combine per-rank (mean, biased var) of G x C statistics over the ranks, differentiably."""
    from torch.distributed.nn.functional import all_gather  # autograd-aware

    world = dist.get_world_size(group)
    means = torch.stack(all_gather(mean.contiguous(), group=group))  # world x G x C
    variances = torch.stack(all_gather(var.contiguous(), group=group))
    # Every rank holds the same number of images per group (the same per-device batch).
    total_mean = means.mean(dim=0)
    total_var = (variances + (means - total_mean) ** 2).mean(dim=0)
    return total_mean, total_var, count * world


def _update_running_stats(bn, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """As `groups` consecutive train-mode forwards would: one momentum step per group, in order,
    with the unbiased variance; both buffers in one (foreach) kernel per step."""
    unbiased = var * (count / max(count - 1, 1))
    buffers = [bn.running_mean, bn.running_var]
    with torch.no_grad():
        for g, momentum in enumerate(_momenta(bn, mean.shape[0])):
            if momentum:
                torch._foreach_lerp_(
                    buffers,
                    [mean[g].to(bn.running_mean.dtype), unbiased[g].to(bn.running_var.dtype)],
                    momentum,
                )


class _GroupedBatchNorm:
    """Mixed in before a BN class, once (its instances' class is swapped): train-mode forwards
    read how to group from three attributes that `batch_groups` sets for its block. With the class
    defaults (no block active) the BN is the plain BN. Keeping the forward fixed (no closures
    installed per call) is what lets torch.compile trace a model once and reuse it, block after
    block."""

    bn_groups: int = 1
    bn_groups_sync: bool = False
    bn_groups_impl: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and (self.bn_groups > 1 or self.bn_groups_sync):
            return grouped_batch_norm(
                self, x, self.bn_groups, self.bn_groups_sync, self.bn_groups_impl
            )
        return super().forward(x)


# Named module-level classes (not made on the fly) so that a model holding them still pickles.
class GroupedBatchNorm1d(_GroupedBatchNorm, nn.BatchNorm1d):
    pass


class GroupedBatchNorm2d(_GroupedBatchNorm, nn.BatchNorm2d):
    pass


class GroupedBatchNorm3d(_GroupedBatchNorm, nn.BatchNorm3d):
    pass


class GroupedSyncBatchNorm(_GroupedBatchNorm, nn.SyncBatchNorm):
    pass


_GROUPED = {
    nn.BatchNorm1d: GroupedBatchNorm1d,
    nn.BatchNorm2d: GroupedBatchNorm2d,
    nn.BatchNorm3d: GroupedBatchNorm3d,
    nn.SyncBatchNorm: GroupedSyncBatchNorm,
}


def _grouped_class(cls: type) -> type:
    if issubclass(cls, _GroupedBatchNorm):
        return cls
    if cls not in _GROUPED:  # another BN subclass: made here, so such a model does not pickle
        _GROUPED[cls] = type(f"Grouped{cls.__name__}", (_GroupedBatchNorm, cls), {})
    return _GROUPED[cls]


def _batch_norms(model: nn.Module) -> list[nn.Module]:
    """model's BNs, each made a grouped BN (its class swapped once; state and parameters kept)."""
    bns = []
    for module in model.modules():
        # A forward set on the instance (someone else's patch) would shadow the class's: skip it.
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_bn and "forward" not in module.__dict__:
            module.__class__ = _grouped_class(type(module))
            bns.append(module)
    return bns


def set_batch_norm_impl(model: nn.Module, impl: str | None) -> nn.Module:
    """Make `impl` (one of IMPLS; None: `default_impl()`) the per-batch BN implementation of
    every BN of `model` in later `batch_groups` blocks that name none (benchmarks compare them)."""
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"batch_groups: impl={impl!r}, expected one of {IMPLS}")
    for bn in _batch_norms(model):
        bn.bn_groups_impl = impl
    return model


_SETTINGS = ("bn_groups", "bn_groups_sync", "bn_groups_impl")


@contextmanager
def batch_groups(
    model: nn.Module, groups: int, sync: bool = False, impl: str | None = None
) -> Iterator[nn.Module]:
    """Within the block, every train-mode BatchNorm of `model` normalises each of `groups` equal,
    consecutive slices of its batch (N x C x ..., N a multiple of groups) with the slice's own
    statistics (eval-mode BNs are unchanged: running statistics treat each image on its own
    anyway). `sync=True` also combines plain BNs' group statistics over the default process group's
    ranks (SyncBatchNorm always does). `impl`: one of IMPLS; None keeps what `set_batch_norm_impl`
    chose, else `default_impl()` ("one_pass" when compiled, "calls" in eager mode)."""
    if groups < 1:
        raise ValueError(f"batch_groups: groups={groups}, expected >= 1")
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"batch_groups: impl={impl!r}, expected one of {IMPLS}")
    saved = []
    if groups > 1 or sync:
        for bn in _batch_norms(model):
            saved.append((bn, [bn.__dict__.get(name) for name in _SETTINGS]))
            bn.bn_groups, bn.bn_groups_sync = groups, sync
            if impl is not None:
                bn.bn_groups_impl = impl
    try:
        yield model
    finally:
        for bn, values in saved:  # back to what was set before (a nested block) or the defaults
            for name, value in zip(_SETTINGS, values):
                if value is None:
                    bn.__dict__.pop(name, None)
                else:
                    setattr(bn, name, value)


__all__ = ["IMPLS", "batch_groups", "default_impl", "grouped_batch_norm", "set_batch_norm_impl"]
