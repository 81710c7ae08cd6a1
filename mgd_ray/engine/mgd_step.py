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

from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from ..data.cutmix import mix
from ..losses import (
    content_aware_from_similarity,
    pixel_consistency_from_labels,
    semantic_sensitive_from_pooled,
    supervised_loss,
)
from .batch_groups import batch_groups
from .targets import Targets

if TYPE_CHECKING:
    from .batches import Batch


def active_terms(weights: dict[str, float]) -> set[str]:
    """The terms a run trains with: those of non-zero weight. What the step computes depends on
    this set only; the weights themselves reach nothing but the total (losses.weighted_total)."""
    return {name for name, weight in weights.items() if float(weight) > 0}


def mgd_losses(
    student: nn.Module,
    batch: Batch,
    targets: Targets,
    active: set[str],
    confidence_threshold: float = 0.0,
    sup_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = supervised_loss,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The loss terms of one iteration, keyed "sup" / "pixel" / "semantic" / "region" (active ones
    only), and detached statistics {"kept_fraction"}: the share of pseudo-label pixels above the
    confidence threshold over the four L_P terms (0 when L_P is off).

    `batch`: the iteration's images, labels and binary CutMix mask (batches.Batch); `targets`:
    the teachers' targets of its mask stream (engine/targets.py: live_targets or a store), at
    least those the `active` terms (of non-zero weight, active_terms) read. The student runs once,
    on [x_m; x_l] concatenated (DDP's one-forward-per-backward rule), with BN statistics per
    batch."""
    if not active:
        raise ValueError(
            "mgd_losses: no active term (every weight is 0); nothing would train the student"
        )
    missing = targets.missing(active)
    if missing:
        raise ValueError(f"mgd_losses: weights {sorted(active)} need teacher targets {missing}")
    x_l, y, mask = batch.x_l, batch.y, batch.mask
    x_m = mix(mask, batch.u0, batch.u1)
    use_labeled = bool(active & {"sup", "pixel"})
    use_mixed = bool(active & {"pixel", "semantic", "region"})
    # One forward (DDP's one forward per backward), but BN statistics per batch and running
    # statistics updated in the order of the official code's two student forwards (x_m, then x_l).
    inputs = [x for x, used in ((x_m, use_mixed), (x_l, use_labeled)) if used]
    groups = len(inputs) if len({x.shape[0] for x in inputs}) == 1 else 1
    with batch_groups(student, groups):
        out = student(torch.cat(inputs) if len(inputs) > 1 else inputs[0])
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
        for t in (targets.wide, targets.deep):
            label_m = torch.where(shows_u1, t.u1.label, t.u0.label)
            code_m = torch.where(shows_u1, t.u1.code, t.u0.code)
            for logits, label, code in ((s_m, label_m, code_m), (s_l, t.x_l.label, t.x_l.code)):
                loss, count = pixel_consistency_from_labels(
                    logits, label, code, confidence_threshold
                )
                pixel.append(loss)
                kept = kept + count
        terms["pixel"] = torch.stack(pixel).sum()
        kept = kept / (2 * (y.numel() + mask.numel()))
    if "semantic" in active:
        terms["semantic"] = semantic_sensitive_from_pooled(s_m, targets.deep.mixed)
    if "region" in active:
        terms["region"] = content_aware_from_similarity(s_m_features, targets.wide.mixed)
    return terms, {"kept_fraction": kept.detach()}
