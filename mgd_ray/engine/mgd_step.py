"""One MGD distillation iteration's losses (docs/design.md, "The method"), computing only what trains the
student: a term whose weight is 0 is skipped together with every forward only it needs, so a
supervised-only run never touches a teacher.

    x_m = (1 - M) * u0 + M * u1
    Y_T = argmax[(1 - M) * T(u0) + M * T(u1)]     for T in (teacher_wide, teacher_deep)
    L_sup = CE(S(x_l), y)
    L_P   = CE(S(x_m), Y_TW) + CE(S(x_m), Y_TD) + CE(S(x_l), argmax T_W(x_l)) + CE(S(x_l), argmax T_D(x_l))
    L_I   = 2 * mean_images sum_c |GAP S(x_m) - GAP T_D(x_m)|   (logits; the official 2-image sum)
    L_R   = MSE(sim(S_feat(x_m)), sim(T_W_feat(x_m)))
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..losses import (content_aware_loss, masked_cross_entropy, pseudo_label,
                      semantic_sensitive_loss, supervised_loss)
from ..schema import IGNORE_INDEX
from .batch_groups import batch_groups

# Which images each teacher must see for each active term.
_DEEP_INPUTS = {"pixel": ("u0", "u1", "x_l"), "semantic": ("x_m",)}
_WIDE_INPUTS = {"pixel": ("u0", "u1", "x_l"), "region": ("x_m",)}


def active_terms(weights: dict[str, float]) -> set[str]:
    return {name for name, weight in weights.items() if float(weight) > 0}


def needs_teachers(weights: dict[str, float]) -> tuple[bool, bool]:
    """(needs teacher_deep, needs teacher_wide) for these weights."""
    active = active_terms(weights)
    return bool(active & set(_DEEP_INPUTS)), bool(active & set(_WIDE_INPUTS))


def freeze(teacher: nn.Module, train_mode: bool = False) -> nn.Module:
    """No gradients; eval mode, or train mode (the paper's: BN normalises with the batch's own
    statistics) with BN momentum 0, so the running statistics, and hence the teacher, never change."""
    teacher.requires_grad_(False)
    teacher.train(train_mode)
    if train_mode:
        for module in teacher.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
            elif isinstance(module, nn.Dropout):
                module.eval()  # batch statistics, yes; random dropped activations in the targets, no
    return teacher


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def teacher_forward(teacher: nn.Module, images: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"logits", "features"} for each named batch (all B x 3 x S x S), from ONE forward over
    the concatenated batches (fewer, larger kernels than a forward per batch).

    In eval mode every layer treats each image on its own. In train mode (the paper's) each named
    batch must be normalised with its own statistics, as the official per-batch forwards do:
    `batch_groups` makes every BN do that inside the batched forward, and on several ranks combines
    each batch's statistics over the ranks, as the official SyncBatchNorm did. Batches of unequal
    sizes fall back to one forward each."""
    names = list(images)
    sizes = [images[name].shape[0] for name in names]
    if teacher.training and len(set(sizes)) > 1:
        return {name: teacher(images[name]) for name in names}
    groups = len(names) if teacher.training else 1
    with batch_groups(teacher, groups, sync=teacher.training and _distributed()):
        out = teacher(torch.cat([images[name] for name in names]))
    logits, features = out["logits"].split(sizes), out["features"].split(sizes)
    return {name: {"logits": logits[i], "features": features[i]} for i, name in enumerate(names)}


def mix(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(1 - M) * a + M * b with M B x H x W broadcast over channels (a, b B x C x H x W)."""
    m = mask.unsqueeze(1).to(a.dtype)
    return (1 - m) * a + m * b


def mgd_losses(student: nn.Module, teacher_deep: nn.Module | None, teacher_wide: nn.Module | None,
               x_l: torch.Tensor, y: torch.Tensor, u0: torch.Tensor, u1: torch.Tensor, mask: torch.Tensor,
               weights: dict[str, float], confidence_threshold: float = 0.0,
               sup_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = supervised_loss,
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The loss terms of one iteration, keyed "sup" / "pixel" / "semantic" / "region" (active ones
    only), and detached statistics {"kept_fraction"}: the share of pseudo-label pixels above the
    confidence threshold over the four L_P terms (0 when L_P is off).

    x_l, u0, u1: B x 3 x S x S; y: B x S x S; mask: B x S x S CutMix mask. The student runs once, on
    [x_m; x_l] concatenated (DDP's one-forward-per-backward rule), with BN statistics per batch."""
    active = active_terms(weights)
    if not active:
        raise ValueError(f"mgd_losses: every weight is 0 ({weights}); nothing would train the student")
    need_deep, need_wide = needs_teachers(weights)
    for needed, teacher, name in ((need_deep, teacher_deep, "teacher_deep"), (need_wide, teacher_wide, "teacher_wide")):
        if needed and teacher is None:
            raise ValueError(f"mgd_losses: weights {sorted(active)} need {name}, which is None")
    x_m = mix(mask, u0, u1)
    images = {"x_l": x_l, "u0": u0, "u1": u1, "x_m": x_m}
    deep = _teacher_outputs(teacher_deep, active, _DEEP_INPUTS, images)
    wide = _teacher_outputs(teacher_wide, active, _WIDE_INPUTS, images)

    use_labeled = bool(active & {"sup", "pixel"})
    use_mixed = bool(active & {"pixel", "semantic", "region"})
    # One forward (DDP's one forward per backward), but BN statistics per batch and running
    # statistics updated in the order of the official code's two student forwards (x_m, then x_l).
    batch = [x for x, used in ((x_m, use_mixed), (x_l, use_labeled)) if used]
    groups = len(batch) if len({x.shape[0] for x in batch}) == 1 else 1
    with batch_groups(student, groups):
        out = student(torch.cat(batch) if len(batch) > 1 else batch[0])
    n_m = x_m.shape[0] if use_mixed else 0
    s_m, s_m_features = out["logits"][:n_m], out["features"][:n_m]
    s_l = out["logits"][n_m:]

    terms: dict[str, torch.Tensor] = {}
    kept = torch.zeros((), device=x_l.device)
    if "sup" in active:
        terms["sup"] = sup_loss(s_l, y)
    if "pixel" in active:
        pixel = []
        for t in (wide, deep):
            label_m, _ = pseudo_label(mix(mask, t["u0"]["logits"], t["u1"]["logits"]), confidence_threshold)
            label_l, _ = pseudo_label(t["x_l"]["logits"], confidence_threshold)
            pixel += [masked_cross_entropy(s_m, label_m), masked_cross_entropy(s_l, label_l)]
            kept = kept + (label_m != IGNORE_INDEX).sum() + (label_l != IGNORE_INDEX).sum()
        terms["pixel"] = torch.stack(pixel).sum()
        kept = kept / (2 * (y.numel() + mask.numel()))
    if "semantic" in active:
        terms["semantic"] = semantic_sensitive_loss(s_m, deep["x_m"]["logits"])
    if "region" in active:
        terms["region"] = content_aware_loss(s_m_features, wide["x_m"]["features"])
    return terms, {"kept_fraction": kept.detach()}


def _teacher_outputs(teacher, active, inputs_per_term, images):
    names = sorted({name for term in active & set(inputs_per_term) for name in inputs_per_term[term]})
    if not names:
        return {}
    return teacher_forward(teacher, {name: images[name] for name in names})
