"""The VOC and Cityscapes presets against the official recipe (docs/design.md, "The recipe", from
exp.voc/voc8.*/ and exp.city/city8.* config.py + script.sh), and how a preset reaches the study."""

from __future__ import annotations

import pytest
import torch

import mgd_ray.losses as losses
from mgd_ray.config import TEACHER_DEEP, TEACHER_WIDE
from mgd_ray.engine.presets import load_preset, preset_optim, read_preset

R18, MBV2 = "deeplabv3plus_resnet18", "deeplabv3plus_mobilenetv2"

# docs/design.md, "The recipe", row by row: official lr / total batch, CPS weight, epochs
# (1/16, 1/8, 1/4, 1/2); and the GPUs of the official runs.
RECIPE = {
    "student_lr": {"voc": {R18: 0.01, MBV2: 0.014}, "cityscapes": {R18: 0.02}},
    "student_batch": {"voc": 8, "cityscapes": 16},
    "teacher_lr": {
        "voc": {TEACHER_DEEP: 0.01, TEACHER_WIDE: 0.004},
        "cityscapes": {TEACHER_DEEP: 0.02, TEACHER_WIDE: 0.02},
    },
    "teacher_batch": {"voc": 8, "cityscapes": 8},
    "cps": {"voc": 1.0, "cityscapes": 5.0},
    "epochs": {
        "voc": {"1/16": 32, "1/8": 34, "1/4": 40, "1/2": 60},
        "cityscapes": {"1/16": 128, "1/8": 137, "1/4": 160, "1/2": 240},
    },
    "gpus": {"voc": 4, "cityscapes": 8},
}


@pytest.mark.parametrize("dataset", ["cityscapes", "voc"])
def test_official_values_match_the_design_table(dataset):
    table = {row: by_dataset[dataset] for row, by_dataset in RECIPE.items()}
    for student, lr in table["student_lr"].items():
        preset, raw = load_preset(dataset, "1/8", student), read_preset(dataset)[0]
        assert raw["lr"][student] == lr  # the preset file holds the official values
        assert raw["teacher_lr"] == table["teacher_lr"]
        assert raw["weight_decay"] == 1e-4 and raw["official_gpus"] == table["gpus"]
        assert (
            preset["batch_size"] == table["student_batch"]
            and preset["teacher_batch_size"] == table["teacher_batch"]
        )
        assert preset["cps_weight"] == table["cps"] and preset["warmup_fraction"] == 0.0
        # In our gradient convention (plain mean losses, DDP averaging): lr / NGPUS, weight decay x
        # NGPUS.
        assert preset["lr"] == pytest.approx(lr / table["gpus"])
        assert preset["weight_decay"] == pytest.approx(1e-4 * table["gpus"])
        optim = preset_optim(preset, "student", 1000)
        assert (optim.lr, optim.weight_decay) == pytest.approx(
            (lr / table["gpus"], 1e-4 * table["gpus"])
        )
        assert (optim.momentum, optim.poly_power, optim.warmup_iterations) == (0.9, 0.9, 0)
        for arch, teacher_lr in table["teacher_lr"].items():
            assert preset_optim(preset, "teacher", 1000, arch).lr == pytest.approx(
                teacher_lr / table["gpus"]
            )


def test_voc_resolved_values_by_hand():
    voc = load_preset("voc", "1/8", R18)
    assert (
        voc["lr"],
        voc["teacher_lr"][TEACHER_DEEP],
        voc["teacher_lr"][TEACHER_WIDE],
    ) == pytest.approx((0.0025, 0.0025, 0.001))
    assert load_preset("voc", "1/8", MBV2)["lr"] == pytest.approx(0.0035)
    assert voc["crop_size"] == 512 and not voc["ohem"] and voc["weights"].semantic == 0.002
    with pytest.raises(ValueError, match="teachers' learning rates differ"):
        preset_optim(voc, "teacher", 10)


@pytest.mark.parametrize(
    "protocol, per_epoch, epochs",
    [
        # labeled ceil(10582 / k), unlabeled the rest; epoch = ceil(max / 8).
        ("1/16", 1240, 32),  # 662 / 9,920
        ("1/8", 1158, 34),  # 1,323 / 9,259
        ("1/4", 992, 40),  # 2,646 / 7,936
        ("1/2", 662, 60),  # 5,291 / 5,291
    ],
)
def test_voc_iterations_from_official_epochs(protocol, per_epoch, epochs):
    for devices in (1, 2, 4, 8):  # the same schedule whatever the device count
        preset = load_preset("voc", protocol, R18, num_devices=devices)
        assert preset["student_iterations"] == preset["teacher_iterations"] == per_epoch * epochs
        assert preset["batch_size"] * devices == 8
        assert preset["eval_every"] == 5 * per_epoch


def test_cityscapes_batches_iterations_and_ohem():
    # 1/8: 372 / 2,603. Students: ceil(2603 / 16) = 163 per epoch; teachers: ceil(2603 / 8) = 326.
    city = load_preset("cityscapes", "1/8", R18, num_devices=8)
    assert (city["batch_size"], city["teacher_batch_size"]) == (
        2,
        1,
    )  # the official 2 and 1 per GPU
    assert city["student_iterations"] == 163 * 137 and city["teacher_iterations"] == 326 * 137
    assert city[
        "ohem"
    ]  # keeping 50,000 pixels per image: test_ohem_min_kept_defaults_to_50000_per_image
    assert city["weights"].semantic == 0.001 and city["crop_size"] == 800
    # 1/2: 1,488 labeled > 1,487 unlabeled: the labeled list sets the epoch, ceil(1488 / 16) = 93.
    assert load_preset("cityscapes", "1/2", R18)["student_iterations"] == 93 * 240
    one = load_preset("cityscapes", "1/8", R18, num_devices=1)
    assert (one["batch_size"], one["teacher_batch_size"]) == (16, 8)
    assert one["student_iterations"] == city["student_iterations"]


def test_a_total_batch_that_does_not_split_is_an_error():
    with pytest.raises(ValueError, match=r"batch_total=8 .* does not split over 3 devices"):
        load_preset("voc", "1/8", R18, num_devices=3)
    with pytest.raises(
        ValueError, match=r"teacher_batch_total=8 .* does not split over 16 devices"
    ):
        load_preset("cityscapes", "1/8", R18, num_devices=16)
    with pytest.raises(ValueError, match="expected one of"):
        load_preset("coco", "1/8")


def test_synthetic_preset_keeps_its_per_device_batch_and_warm_up():
    synthetic = load_preset("synthetic", "1/8")
    assert preset_optim(synthetic, "student", 150).warmup_iterations == round(
        synthetic["warmup_fraction"] * 150
    )
    assert load_preset("synthetic", "1/8", num_devices=2)["batch_size"] == synthetic["batch_size"]
    assert preset_optim(synthetic, "teacher", 10).lr == synthetic["teacher_lr"][TEACHER_DEEP]


def test_official_gradient_scale_equals_scaled_lr_and_weight_decay():
    """SGD(lr, wd) stepping on gradient / W (the official train.py) makes exactly the updates of
    SGD(lr / W, wd * W) on the gradient itself (what load_preset gives), momentum included."""
    w, lr, wd = 4, 0.01, 1e-4
    torch.manual_seed(0)
    start = torch.randn(5)
    official, ours = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    opt_official = torch.optim.SGD([official], lr=lr, momentum=0.9, weight_decay=wd)
    opt_ours = torch.optim.SGD([ours], lr=lr / w, momentum=0.9, weight_decay=wd * w)
    for step in range(20):
        target = torch.randn(5, generator=torch.Generator().manual_seed(step))
        for param, opt, scale in ((official, opt_official, 1 / w), (ours, opt_ours, 1.0)):
            opt.zero_grad()
            (scale * ((param - target) ** 2).sum()).backward()
            opt.step()
    assert torch.allclose(official, ours, atol=1e-6)


def test_ohem_min_kept_defaults_to_50000_per_image(monkeypatch):
    monkeypatch.setattr(
        losses, "OHEM_MIN_KEPT_PER_IMAGE", 1
    )  # 1 pixel per image, to see the scaling
    # Two images of 2 pixels; true-class probabilities 0.9, 0.95 | 0.99, 0.6. Threshold 0.7 keeps
    # only 0.6; min_kept = 1 x 2 images = 2 raises the threshold to the 2nd smallest probability,
    # 0.9.
    probs = torch.tensor([[0.9, 0.95], [0.99, 0.6]])
    logits = torch.stack([torch.log(1 - probs), torch.log(probs)], dim=1)[
        :, :, None, :
    ]  # B x 2 x 1 x 2
    target = torch.ones(2, 1, 2, dtype=torch.long)
    loss = losses.supervised_loss(logits, target, ohem=True)
    assert loss.item() == pytest.approx(
        -(torch.log(torch.tensor(0.9)) + torch.log(torch.tensor(0.6))).item() / 2, rel=1e-5
    )


def test_study_plan_carries_the_recipe_to_students_and_each_teacher(tmp_path):
    from mgd_ray.distributed.plan import plan_protocol
    from mgd_ray.distributed.study_config import StudyConfig

    cfg = StudyConfig.from_options(
        output_dir=str(tmp_path / "study"),
        dataset="cityscapes",
        data_root=str(tmp_path),
        protocols=("1/8",),
        workers_per_trial=4,
    )
    plan = plan_protocol(cfg, "1/8")
    distill = plan.distill.to_dict()
    assert distill["data"]["batch_size"] == 4 and distill["optim"]["lr"] == pytest.approx(0.0025)
    assert (
        distill["optim"]["weight_decay"] == pytest.approx(8e-4) and distill["teacher_train_mode"]
    )
    assert distill["iterations"] == 163 * 137 and distill["ohem"]
    for arch in (TEACHER_DEEP, TEACHER_WIDE):
        teacher = plan.teachers[arch]
        assert teacher.arch == arch and teacher.data.batch_size == 2 and teacher.cps_weight == 5.0
        assert teacher.iterations == 326 * 137 and teacher.optim.lr == pytest.approx(0.0025)
    voc = plan_protocol(
        StudyConfig.from_options(
            output_dir=str(tmp_path / "v"),
            dataset="voc",
            data_root=str(tmp_path),
            protocols=("1/8",),
            workers_per_trial=4,
        ),
        "1/8",
    )
    assert voc.teachers[TEACHER_DEEP].optim.lr == pytest.approx(0.0025)
    assert voc.teachers[TEACHER_WIDE].optim.lr == pytest.approx(0.001)
    assert voc.distill.data.batch_size == 2 and voc.distill.data.paper_split
