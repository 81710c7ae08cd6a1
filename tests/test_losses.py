"""Each MGD loss term against small hand-computed cases."""

import math

import pytest
import torch

from mgd_ray.config import DistillConfig
from mgd_ray.losses import (
    confidence_code,
    content_aware_loss,
    lowest_kept_code,
    masked_cross_entropy,
    pixel_consistency_loss,
    pseudo_label,
    semantic_sensitive_loss,
    supervised_loss,
    weighted_total,
)

LN2, LN3 = math.log(2.0), math.log(3.0)


def _pixels(values):
    """[(class-0 logit, class-1 logit)] for a 2 x 2 image, row-major -> 1 x 2 x 2 x 2 logits."""
    return torch.tensor(values, dtype=torch.float32).T.reshape(1, 2, 2, 2)


# Student: CE(target 0) = ln2, ln4 at pixels 0, 1; CE(target 1) = ln4, ln2 at pixels 2, 3.
STUDENT = _pixels([(0.0, 0.0), (0.0, LN3), (LN3, 0.0), (0.0, 0.0)])
# Teacher: labels 0, 0, 1, 1 with confidences sigmoid(2), sigmoid(1), sigmoid(3), sigmoid(0.5).
TEACHER = _pixels([(2.0, 0.0), (1.0, 0.0), (0.0, 3.0), (0.0, 0.5)])


def test_pseudo_label_labels_and_confidence():
    label, confidence = pseudo_label(TEACHER)
    assert label.tolist() == [[[0, 0], [1, 1]]]

    def sig(x):
        return 1.0 / (1.0 + math.exp(-x))

    expected = torch.tensor([[[sig(2), sig(1)], [sig(3), sig(0.5)]]])
    assert torch.allclose(confidence, expected, atol=1e-6)
    label, _ = pseudo_label(TEACHER, threshold=0.7)
    assert label.tolist() == [[[0, 0], [1, 255]]]


def test_confidence_is_rounded_to_a_code_before_the_threshold():
    """A pixel is kept when round(255 * confidence) / 255 > tau: what stored targets hold, and the
    live path compares too. At tau = 0.75 the lowest kept code is 192 (191 / 255 = 0.749), so a
    confidence of 0.7505 (code 191) is dropped although above 0.75; 0.7512 (code 192) is kept."""
    assert [lowest_kept_code(t) for t in (0.0, 0.5, 0.75, 0.8, 1.0)] == [1, 128, 192, 205, 256]

    def logit(p):  # 2 classes: softmax of (logit(p), 0) is p
        return math.log(p / (1 - p))

    teacher = _pixels([(logit(0.7505), 0.0), (logit(0.7512), 0.0), (0.0, 9.0), (0.0, 0.0)])
    label, confidence = pseudo_label(teacher, threshold=0.75)
    assert confidence_code(confidence).tolist() == [[[191, 192], [255, 128]]]
    assert label.tolist() == [[[255, 0], [1, 255]]]
    assert pseudo_label(teacher, threshold=0.5)[0].tolist() == [[[0, 0], [1, 0]]]  # 128/255 > 0.5


def test_pixel_consistency_hand_computed():
    assert pixel_consistency_loss(STUDENT, TEACHER).item() == pytest.approx(1.5 * LN2, abs=1e-6)
    # tau = 0.7 drops the last pixel (confidence sigmoid(0.5) = 0.62).
    assert pixel_consistency_loss(STUDENT, TEACHER, threshold=0.7).item() == pytest.approx(
        5 * LN2 / 3, abs=1e-6
    )


def test_threshold_one_keeps_nothing_and_gives_zero_not_nan():
    student = STUDENT.clone().requires_grad_(True)
    saturated = TEACHER * 100  # softmax rounds to exactly 1.0 here; still nothing is kept
    for teacher in (TEACHER, saturated):
        label, _ = pseudo_label(teacher, threshold=1.0)
        assert (label == 255).all()
        loss = pixel_consistency_loss(student, teacher, threshold=1.0)
        assert loss.item() == 0.0
        loss.backward()
        assert torch.isfinite(student.grad).all() and (student.grad == 0).all()


def test_identical_student_and_teacher():
    logits = torch.randn(2, 5, 6, 6)
    features = torch.randn(2, 16, 12, 12)
    assert semantic_sensitive_loss(logits, logits.clone()).item() == 0.0
    assert content_aware_loss(features, features.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # Cosine similarity ignores a per-region scale, so a scaled copy also gives 0.
    assert content_aware_loss(3.0 * features, features).item() == pytest.approx(0.0, abs=1e-6)


def test_semantic_sensitive_hand_computed():
    # GAP(student) = (ln3/4, ln3/4); GAP(teacher) = (3/4, 3.5/4).
    expected = abs(LN3 / 4 - 0.75) + abs(LN3 / 4 - 0.875)
    # Normalised to the official 2-image sum: 2 x the mean over images (issue 12).
    assert semantic_sensitive_loss(STUDENT, TEACHER).item() == pytest.approx(
        2 * expected, abs=1e-6
    )
    two = semantic_sensitive_loss(STUDENT.repeat(2, 1, 1, 1), TEACHER.repeat(2, 1, 1, 1))
    assert two.item() == pytest.approx(2 * expected, abs=1e-6)  # = the official sum over 2 images


def test_semantic_sensitive_gradient_per_image_is_the_same_at_2_and_8_images_per_device():
    """At the paper's lambda_I, a device holding 8 images must push each image as hard as the
    official device holding 2 did: the gradient reaching any one image's logits is 4x smaller at
    8 images (as for a mean CE), and a weight every image shares gets the same gradient when the 8
    images are 4 copies of the 2."""
    lambda_i = 0.002
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 6, 6), torch.randn(2, 5, 6, 6)
    official = (
        lambda_i * (student.mean(dim=(2, 3)) - teacher.mean(dim=(2, 3))).abs().sum()
    )  # the 2-image sum

    def grads(batch_copies: int):
        s = student.repeat(batch_copies, 1, 1, 1).requires_grad_(True)
        scale = torch.ones((), requires_grad=True)  # a weight every image shares
        loss = lambda_i * semantic_sensitive_loss(scale * s, teacher.repeat(batch_copies, 1, 1, 1))
        loss.backward()
        return loss, s.grad, scale.grad

    loss2, logits_grad2, shared2 = grads(1)
    loss8, logits_grad8, shared8 = grads(4)
    assert loss2.item() == pytest.approx(official.item(), rel=1e-6)
    assert loss8.item() == pytest.approx(official.item(), rel=1e-6)
    assert shared8.item() == pytest.approx(shared2.item(), rel=1e-5)
    # Per image, as a share of the batch: B x dL/d(logits of image i) is the same at B = 2 and
    # B = 8.
    assert torch.allclose(8 * logits_grad8[:2], 2 * logits_grad2, atol=1e-9)
    # The hand value: d/ds of lambda_I * 2/B * |mean(s) - mean(t)| at each pixel is
    # lambda_I * 2/B * sign / (6 * 6).
    sign = torch.sign(student.mean(dim=(2, 3)) - teacher.mean(dim=(2, 3)))[
        :, :, None, None
    ].expand(2, 5, 6, 6)
    assert torch.allclose(logits_grad2, lambda_i * sign / 36, atol=1e-9)


def test_content_aware_hand_computed():
    # grid 2 on a 2 x 2 map pools nothing; regions (1,0), (0,1), (1,1), (1,0) against a teacher
    # whose regions are all parallel (similarity 1 everywhere).
    student = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0]]).T.reshape(1, 2, 2, 2)
    teacher = torch.tensor([[2.0, 0.0]] * 4).T.reshape(1, 2, 2, 2)
    c = 1 - 2**-0.5
    expected = (
        2 * (1 + 1 + 3 * c * c) / 16
    )  # off-diagonal squared errors, each pair twice, over 4 x 4
    assert content_aware_loss(student, teacher, grid=2).item() == pytest.approx(expected, abs=1e-6)


def test_content_aware_allows_different_channel_counts():
    loss = content_aware_loss(torch.randn(2, 8, 14, 14), torch.randn(2, 32, 14, 14))
    assert loss.shape == () and torch.isfinite(loss)


def test_supervised_ce_with_ignore():
    target = torch.tensor([[[0, 255], [1, 0]]])
    # pixels 0, 2, 3: CE = ln2, ln4, ln2
    assert supervised_loss(STUDENT, target).item() == pytest.approx(4 * LN2 / 3, abs=1e-6)
    assert masked_cross_entropy(STUDENT, torch.full((1, 2, 2), 255)).item() == 0.0


def test_ohem_keeps_hard_pixels_and_at_least_min_kept():
    probs = [0.9, 0.8, 0.6, 0.95]  # probability of the true class 0 at each pixel
    logits = _pixels([(math.log(p), math.log(1 - p)) for p in probs])
    target = torch.zeros(1, 2, 2, dtype=torch.int64)
    # Only 0.6 is below 0.7; min_kept 2 raises the threshold to the 2nd smallest probability (0.8).
    loss = supervised_loss(logits, target, ohem=True, ohem_threshold=0.7, min_kept=2)
    assert loss.item() == pytest.approx(-(math.log(0.6) + math.log(0.8)) / 2, abs=1e-5)
    loss = supervised_loss(logits, target, ohem=True, ohem_threshold=0.7, min_kept=1)
    assert loss.item() == pytest.approx(-math.log(0.6), abs=1e-5)
    # Fewer valid pixels than min_kept: plain CE over all of them.
    loss = supervised_loss(logits, target, ohem=True, min_kept=100)
    assert loss.item() == pytest.approx(-sum(math.log(p) for p in probs) / 4, abs=1e-5)


def test_zero_weight_removes_the_term_gradient():
    a = torch.tensor(2.0, requires_grad=True)
    b = torch.tensor(3.0, requires_grad=True)
    total = weighted_total({"sup": a * a, "region": b * b}, {"sup": 0.5, "region": 0.0})
    total.backward()
    assert total.item() == pytest.approx(2.0)
    assert a.grad.item() == pytest.approx(2.0) and b.grad is None
    nan_term = torch.tensor(float("nan"))
    assert (
        weighted_total(
            {"sup": a.detach(), "semantic": nan_term}, {"sup": 1.0, "semantic": 0.0}
        ).item()
        == 2.0
    )


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="no weight"):
        weighted_total({"sup": torch.tensor(1.0)}, {"pixel": 1.0})
    with pytest.raises(ValueError, match="every term has weight 0"):
        weighted_total({"sup": torch.tensor(1.0)}, {"sup": 0.0})
    with pytest.raises(ValueError, match="B x H x W"):
        supervised_loss(STUDENT, torch.zeros(1, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="B x C x H x W"):
        pseudo_label(TEACHER[0])
    # The threshold is checked once, where a run's config is built (losses assume a valid one).
    with pytest.raises(ValueError, match=r"confidence_threshold=1.5: expected a number in \[0, "):
        DistillConfig(confidence_threshold=1.5)
