"""One MGD distillation iteration's losses (docs/design.md, "The method"), computed from the
teachers' TARGETS (engine/targets.py), whether the teachers ran in this process or a store holds
their outputs, and only what trains the student: a term whose weight is 0 is skipped together with
everything only it needs, so a supervised-only run needs no teacher.

    x_m = (1 - M) * u0 + M * u1
    Y_T = argmax[(1 - M) * T(u0) + M * T(u1)] = where(M, argmax T(u1), argmax T(u0))   (M binary)
    L_sup = CE(S(x_l), y)
    L_P   = CE(S(x_m), Y_TW) + CE(S(x_m), Y_TD)
            + CE(S(x_l), argmax T_W(x_l)) + CE(S(x_l), argmax T_D(x_l))
            over the pixels whose rounded confidence is above the threshold (losses.pseudo_label)
    L_I   = 2 * mean_images sum_c |GAP S(x_m) - GAP T_D(x_m)|   (logits; the official 2-image sum)
    L_R   = MSE(sim(S_feat(x_m)), sim(T_W_feat(x_m)))
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..losses import (
    content_aware_from_similarity,
    pixel_consistency_from_labels,
    semantic_sensitive_from_pooled,
    supervised_loss,
)
from .batch_groups import batch_groups

TEACHERS = ("deep", "wide")
PIXEL_BATCHES = ("u0", "u1", "x_l")  # what L_P needs of each teacher
# What the mixed image x_m gives each teacher's term: (term, target name).
MIXED = {"deep": ("semantic", "pooled"), "wide": ("region", "similarity")}


def active_terms(weights: dict[str, float]) -> set[str]:
    """The terms a run trains with: those of non-zero weight. What the step computes depends on
    this set only; the weights themselves reach nothing but the total (losses.weighted_total)."""
    return {name for name, weight in weights.items() if float(weight) > 0}


def needed(active: set[str]) -> dict[str, dict[str, bool]]:
    """{teacher: {"pixel": needs its (u0, u1, x_l) targets, "mixed": needs its x_m target}} for
    the `active` terms."""
    return {t: {"pixel": "pixel" in active, "mixed": MIXED[t][0] in active} for t in TEACHERS}


def needs_teachers(active: set[str]) -> tuple[bool, bool]:
    """(needs teacher_deep, needs teacher_wide) for the `active` terms."""
    need = needed(active)
    return any(need["deep"].values()), any(need["wide"].values())


def required_keys(active: set[str]) -> list[str]:
    """The teacher targets (engine/targets.py, one stream's keys) the step reads for the `active`
    terms."""
    keys = []
    for teacher, need in needed(active).items():
        if need["pixel"]:
            keys += [f"{teacher}.{b}.{part}" for b in PIXEL_BATCHES for part in ("label", "code")]
        if need["mixed"]:
            keys.append(f"{teacher}.x_m.{MIXED[teacher][1]}")
    return keys


def freeze(teacher: nn.Module, train_mode: bool = False) -> nn.Module:
    """No gradients; eval mode, or train mode (the paper's: BN normalises with the batch's own
    statistics) with BN momentum 0, so the running statistics, and hence the teacher, never
    change."""
    teacher.requires_grad_(False)
    teacher.train(train_mode)
    if train_mode:
        for module in teacher.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
            elif isinstance(module, nn.Dropout):
                # batch statistics, yes; random dropped activations in the targets, no
                module.eval()
    return teacher


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, images: dict[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"logits", "features"} for each named batch (all B x 3 x S x S), from ONE forward
    over the concatenated batches (fewer, larger kernels than a forward per batch).

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


def mgd_losses(
    student: nn.Module,
    targets: dict[str, torch.Tensor],
    x_l: torch.Tensor,
    y: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    mask: torch.Tensor,
    active: set[str],
    confidence_threshold: float = 0.0,
    sup_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = supervised_loss,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The loss terms of one iteration, keyed "sup" / "pixel" / "semantic" / "region" (active ones
    only), and detached statistics {"kept_fraction"}: the share of pseudo-label pixels above the
    confidence threshold over the four L_P terms (0 when L_P is off).

    x_l, u0, u1: B x 3 x S x S; y: B x S x S; mask: B x S x S binary CutMix mask; `targets`: one
    mask stream's teacher targets (targets.for_stream keys; live_targets or a store), at least
    those required_keys(active) names; `active`: the terms of non-zero weight (active_terms). The
    student runs once, on [x_m; x_l] concatenated (DDP's one-forward-per-backward rule), with BN
    statistics per batch."""
    if not active:
        raise ValueError(
            "mgd_losses: no active term (every weight is 0); nothing would train the student"
        )
    missing = [key for key in required_keys(active) if key not in targets]
    if missing:
        raise ValueError(f"mgd_losses: weights {sorted(active)} need teacher targets {missing}")
    x_m = mix(mask, u0, u1)
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
        shows_u1 = mask.bool()
        pixel = []
        for t in ("wide", "deep"):
            label_m = torch.where(shows_u1, targets[f"{t}.u1.label"], targets[f"{t}.u0.label"])
            code_m = torch.where(shows_u1, targets[f"{t}.u1.code"], targets[f"{t}.u0.code"])
            label_l, code_l = targets[f"{t}.x_l.label"], targets[f"{t}.x_l.code"]
            for logits, label, code in ((s_m, label_m, code_m), (s_l, label_l, code_l)):
                loss, count = pixel_consistency_from_labels(
                    logits, label, code, confidence_threshold
                )
                pixel.append(loss)
                kept = kept + count
        terms["pixel"] = torch.stack(pixel).sum()
        kept = kept / (2 * (y.numel() + mask.numel()))
    if "semantic" in active:
        terms["semantic"] = semantic_sensitive_from_pooled(s_m, targets["deep.x_m.pooled"])
    if "region" in active:
        terms["region"] = content_aware_from_similarity(
            s_m_features, targets["wide.x_m.similarity"]
        )
    return terms, {"kept_fraction": kept.detach()}
