"""MGD's loss terms: supervised CE (optionally OHEM), pixel-, image- and region-level distillation.

Every term is a scalar tensor; the step collects them in a dict keyed by the LossWeights names
("sup", "pixel", "semantic", "region") and `weighted_total` sums weight * term over that dict, so
an ablation is a zero weight, never a flag. Terms are computed in float32 whatever the autocast
dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .schema import IGNORE_INDEX

OHEM_MIN_KEPT_PER_IMAGE = 50_000
# The official L_I is a sum over the 2 images each of its 4 GPUs holds (exp.voc/*/train.py: total
# batch 8, NGPUS 4); lambda_I was tuned for that sum.
SEMANTIC_IMAGES_PER_DEVICE = 2
REGION_GRID = 7  # L_R pools decoder features to 7 x 7 regions (the paper's)


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean CE over pixels whose target is not `ignore_index`; 0 (with a graph) when none is kept.

    logits B x C x H x W, target B x H x W int64. F.cross_entropy's "mean" divides by the kept
    count and gives NaN when that is 0 (e.g. a confidence threshold that keeps nothing); this never
    does."""
    _check_logits_target(logits, target)
    total = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="sum")
    kept = (target != ignore_index).sum()
    return total / kept.clamp(min=1)


def supervised_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    ohem: bool = False,
    ohem_threshold: float = 0.7,
    min_kept: int | None = None,
) -> torch.Tensor:
    """L_sup: CE(S(x_l), y) with ignore index; logits B x C x H x W, target B x H x W.

    OHEM (Cityscapes in the paper, as CPS's ProbOhemCrossEntropy2d): keep only the hard pixels,
    those whose probability of the true class is <= ohem_threshold, but at least the `min_kept`
    hardest (the threshold rises to the min_kept-th smallest probability); with fewer than
    `min_kept` valid pixels all are kept. min_kept None = OHEM_MIN_KEPT_PER_IMAGE x B, the official
    50,000 x images per device (city8.*/train.py: 50000 * batch_size // world_size)."""
    if not ohem:
        return masked_cross_entropy(logits, target, ignore_index)
    _check_logits_target(logits, target)
    if min_kept is None:
        min_kept = OHEM_MIN_KEPT_PER_IMAGE * logits.shape[0]
    valid = target != ignore_index
    num_valid = int(valid.sum())
    if 0 < num_valid and num_valid >= min_kept:
        with torch.no_grad():
            prob = F.softmax(logits.float(), dim=1)
            safe_target = torch.where(valid, target, torch.zeros_like(target))
            true_prob = prob.gather(1, safe_target.unsqueeze(1)).squeeze(1)
            threshold = torch.tensor(float(ohem_threshold), device=logits.device)
            if min_kept > 0:
                kth = true_prob[valid].kthvalue(min(min_kept, num_valid)).values
                threshold = torch.maximum(threshold, kth)
            hard = valid & (true_prob <= threshold)
        target = torch.where(hard, target, torch.full_like(target, ignore_index))
    return masked_cross_entropy(logits, target, ignore_index)


# Teacher confidences travel as uint8 codes round(255 * max softmax): what a stored target holds
# (engine/targets.py), and what the live path compares too, so that both keep the same pixels.
CONFIDENCE_SCALE = 255


def confidence_code(confidence: torch.Tensor) -> torch.Tensor:
    """uint8 round(255 * confidence) of confidences in [0, 1] (any shape; round half to even)."""
    return torch.round(confidence.float() * CONFIDENCE_SCALE).to(torch.uint8)


def lowest_kept_code(threshold: float) -> int:
    """The smallest confidence code c with c / 255 > threshold, computed exactly (in float64 on the
    host, whatever the device): 256 when no code is (threshold 1)."""
    return next(
        (c for c in range(CONFIDENCE_SCALE + 1) if c / CONFIDENCE_SCALE > threshold),
        CONFIDENCE_SCALE + 1,
    )


def keep_confident(
    label: torch.Tensor, code: torch.Tensor, threshold: float, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Pseudo labels (B x H x W, any integer dtype) as int64 targets, `ignore_index` where the
    confidence code is not above the threshold (code / 255 <= threshold); threshold 0 keeps all.
    The threshold is assumed valid (config.check_confidence_threshold is the one check)."""
    label = label.long()
    if threshold <= 0:
        return label
    lowest = lowest_kept_code(threshold)
    if lowest > CONFIDENCE_SCALE:  # no code is kept (256 would wrap to 0 in a uint8 compare)
        return torch.full_like(label, ignore_index)
    return torch.where(code >= lowest, label, torch.full_like(label, ignore_index))


@torch.no_grad()
def label_and_code(
    teacher_logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(argmax label B x H x W int64, confidence code B x H x W uint8, confidence B x H x W float32
    = max softmax) of teacher logits B x C x H x W: a teacher's per-pixel targets."""
    if teacher_logits.dim() != 4:
        raise ValueError(
            f"teacher_logits: expected B x C x H x W, got shape {tuple(teacher_logits.shape)}"
        )
    confidence, label = F.softmax(teacher_logits.float(), dim=1).max(dim=1)
    return label, confidence_code(confidence), confidence


@torch.no_grad()
def pseudo_label(
    teacher_logits: torch.Tensor, threshold: float = 0.0, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo labels from (already CutMix-mixed) teacher logits B x C x H x W.

    Returns (label B x H x W int64, confidence B x H x W float32 = max softmax). A pixel is kept
    only when its confidence, ROUNDED to a code round(255 * confidence), is strictly above the
    threshold: code / 255 > threshold. The codes are what stored teacher targets hold (uint8), and
    the live path rounds too, so both keep the same pixels; a confidence within 1/510 of the
    threshold may be decided otherwise than the unrounded `confidence > threshold` would
    (docs/benchmarks.md, section 9, measures how often). Threshold 0 keeps every pixel and
    threshold 1 keeps none, even where softmax rounds to exactly 1."""
    label, code, confidence = label_and_code(teacher_logits)
    return keep_confident(label, code, threshold, ignore_index), confidence


def pixel_consistency_from_labels(
    student_logits: torch.Tensor,
    label: torch.Tensor,
    code: torch.Tensor,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(one L_P term, the number of pixels it kept): mean CE of student logits B x C x H x W
    against a teacher's labels B x H x W over the pixels whose confidence code B x H x W (uint8)
    is above the threshold (keep_confident); 0 when none is kept."""
    target = keep_confident(label, code, threshold, ignore_index)
    kept = (target != ignore_index).sum()
    return masked_cross_entropy(student_logits, target, ignore_index), kept


def pixel_consistency_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    threshold: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """One L_P term: mean CE of the student against the teacher's argmax over the kept pixels
    (rounded teacher confidence above `threshold`, as pseudo_label; 0 = the paper); 0 when no pixel
    is kept. Both B x C x H x W."""
    _check_same_shape("pixel_consistency_loss", student_logits, teacher_logits)
    label, code, _ = label_and_code(teacher_logits)
    return pixel_consistency_from_labels(student_logits, label, code, threshold, ignore_index)[0]


def pooled_logits(logits: torch.Tensor) -> torch.Tensor:
    """B x C float32 global average pool of logits B x C x H x W: what L_I compares."""
    return logits.float().mean(dim=(2, 3))


def semantic_sensitive_from_pooled(
    student_logits: torch.Tensor, teacher_pooled: torch.Tensor
) -> torch.Tensor:
    """L_I of student logits B x C x H x W against the teacher's pooled logits B x C
    (pooled_logits), normalised as semantic_sensitive_loss."""
    if student_logits.dim() != 4 or tuple(teacher_pooled.shape) != tuple(student_logits.shape[:2]):
        raise ValueError(
            f"semantic_sensitive_loss: expected B x C x H x W logits and B x C "
            f"teacher pools with the same B and C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_pooled.shape)}"
        )
    per_image = (pooled_logits(student_logits) - teacher_pooled.float()).abs().sum(dim=1)
    return per_image.mean() * SEMANTIC_IMAGES_PER_DEVICE


def semantic_sensitive_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """L_I: |GAP(student logits) - GAP(teacher logits)| (pre-softmax), summed over classes,
    averaged over the B images and multiplied by SEMANTIC_IMAGES_PER_DEVICE (2).

    The official term is the sum over the 2 images of a GPU; this normalisation gives the same
    value at B = 2 and the same per-image weight at any B, so the paper's lambda_I means the same
    thing whatever the images per device (at B = 8 a plain sum would be 4x stronger). Both
    B x C x H x W (sizes may differ: each is pooled over its own H x W)."""
    if student_logits.shape[:2] != teacher_logits.shape[:2] or teacher_logits.dim() != 4:
        raise ValueError(
            f"semantic_sensitive_loss: expected B x C x H x W logits with the same B and C, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    return semantic_sensitive_from_pooled(student_logits, pooled_logits(teacher_logits))


def region_similarity(features: torch.Tensor, grid: int = REGION_GRID) -> torch.Tensor:
    """B x C x H x W features -> B x N x N cosine self-similarity of the grid x grid pooled regions
    (N = grid^2), each region's C-vector normalised to unit length."""
    pooled = F.adaptive_avg_pool2d(features.float(), grid).flatten(2)  # B x C x N
    pooled = F.normalize(pooled, p=2, dim=1, eps=1e-8)
    return torch.einsum("bcm,bcn->bmn", pooled, pooled)


def content_aware_from_similarity(
    student_features: torch.Tensor, teacher_similarity: torch.Tensor, grid: int = REGION_GRID
) -> torch.Tensor:
    """L_R of student features B x C x H x W against the teacher's region self-similarity
    B x N x N (region_similarity, N = grid^2)."""
    n = grid * grid
    expected = (student_features.shape[0], n, n)
    if student_features.dim() != 4 or tuple(teacher_similarity.shape) != expected:
        raise ValueError(
            f"content_aware_loss: expected B x C x H x W features and B x {n} x {n} "
            f"teacher similarities with the same B, got "
            f"{tuple(student_features.shape)} and {tuple(teacher_similarity.shape)}"
        )
    return F.mse_loss(region_similarity(student_features, grid), teacher_similarity.float())


def content_aware_loss(
    student_features: torch.Tensor, teacher_features: torch.Tensor, grid: int = 7
) -> torch.Tensor:
    """L_R: MSE between the student's and the teacher's region self-similarity matrices.

    Features B x C x H x W (decoder output, 256 channels at stride 4). Channel counts may differ:
    the matrices are N x N either way, which is what lets a narrow student match a wide teacher."""
    if teacher_features.dim() != 4 or student_features.shape[0] != teacher_features.shape[0]:
        raise ValueError(
            f"content_aware_loss: expected B x C x H x W features with the same B, got "
            f"{tuple(student_features.shape)} and {tuple(teacher_features.shape)}"
        )
    teacher_similarity = region_similarity(teacher_features, grid)
    return content_aware_from_similarity(student_features, teacher_similarity, grid)


def weighted_total(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_k weights[k] * terms[k]. Terms with weight 0 are left out, not multiplied by zero, so
    they carry no gradient and a non-finite unused term cannot poison the total."""
    missing = sorted(set(terms) - set(weights))
    if missing:
        raise ValueError(
            f"weighted_total: no weight for term(s) {missing}; weights has {sorted(weights)}"
        )
    used = [
        float(weights[name]) * term for name, term in terms.items() if float(weights[name]) != 0.0
    ]
    if not used:
        raise ValueError(
            f"weighted_total: every term has weight 0 (terms {sorted(terms)}, weights {weights})"
        )
    return torch.stack(used).sum()


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    if logits.dim() != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(
            f"expected logits B x C x H x W and target B x H x W, got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    if target.dtype != torch.int64:
        raise ValueError(f"target dtype {target.dtype}: expected torch.int64 class indices")


def _check_same_shape(name: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(
            f"{name}: expected two B x C x H x W tensors of the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
