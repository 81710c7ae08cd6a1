"""Flat per-dataset YAML presets (mgd_ray/presets/<dataset>.yaml) resolved for one protocol, one
student and a run's number of devices.

The VOC and Cityscapes presets hold the official recipe (docs/design.md, "The recipe"): a TOTAL
batch per iteration, split over the devices of a run, so a 1-device and a 4-device run train the
same recipe; the official learning rates per architecture; an epoch of
ceil(max(labeled, unlabeled) / total batch) iterations. The synthetic preset gives a per-device
batch and iterations instead.

Official gradient scale. Every official train.py all-reduces each loss term in place and divides it
by the world size before backward; the all-reduce is not differentiated through, so each GPU's
gradient is 1/NGPUS of its own loss's gradient, and DDP then averages the GPUs' gradients. The
official SGD(lr, weight decay wd) therefore steps on (mean gradient) / NGPUS, which is exactly
SGD(lr / NGPUS, wd * NGPUS) on the mean gradient (momentum buffers scale by NGPUS, updates are
equal). Our losses are plain means and DDP averages, so `load_preset` resolves the official values
that way (the preset key `official_gpus`: 4 on VOC, 8 on Cityscapes); the official values stay
available under "official".
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import yaml

from ..config import (
    DATASETS,
    TEACHER_DEEP,
    TEACHER_WIDE,
    DataConfig,
    DistillConfig,
    LossWeights,
    OptimConfig,
    TeacherConfig,
    check_protocol,
)
from ..data import labeled_count

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
_REQUIRED = ("dataset", "crop_size", "train_images", "lr", "teacher_lr", "ohem")
TEACHERS = (TEACHER_DEEP, TEACHER_WIDE)
DEFAULT_WEIGHT_DECAY = 1e-4


def read_preset(dataset: str) -> tuple[dict, Path]:
    """(the raw YAML of a dataset's preset, its path)."""
    if dataset not in DATASETS:
        raise ValueError(f"preset {dataset!r}: expected one of {', '.join(DATASETS)}")
    path = PRESET_DIR / f"{dataset}.yaml"
    with open(path) as f:
        return yaml.safe_load(f) or {}, path


def _per_arch(value, archs: tuple[str, ...], key: str, path: Path) -> dict[str, float]:
    """A scalar (the same for every arch) or a {arch: value} table -> {arch: float}."""
    if not isinstance(value, dict):
        return {arch: float(value) for arch in archs}
    missing = [arch for arch in archs if arch not in value]
    if missing:
        raise ValueError(f"preset {path}: {key} has no value for {missing} (has {sorted(value)})")
    return {arch: float(value[arch]) for arch in archs}


def _per_device(raw: dict, key: str, num_devices: int, path: Path) -> int:
    """Images per device of a role: the total batch split over the devices (an error when it does
    not divide), or the preset's per-device batch_size."""
    if key in raw:
        total = int(raw[key])
        if total % num_devices:
            raise ValueError(
                f"preset {path}: {key}={total} (the official total batch) does not split over "
                f"{num_devices} devices; use a device count that divides it"
            )
        return total // num_devices
    if "batch_size" in raw:
        return int(raw["batch_size"])
    raise ValueError(f"preset {path}: needs {key} (total batch) or batch_size (per device)")


def load_preset(
    dataset: str,
    protocol: str = "1/8",
    student: str = "deeplabv3plus_resnet18",
    num_devices: int = 1,
) -> dict:
    """The resolved recipe of one dataset, protocol, student and device count:

    "crop_size"; "batch_size" and "teacher_batch_size" (images per device per batch: the total
    batch / num_devices); "lr" (the student's) and "teacher_lr" ({teacher arch: lr}) and
    "weight_decay", in our gradient convention (module docstring: the preset's own values are the
    official code's); "warmup_fraction"; "cps_weight"; "ohem" (OHEM keeps at least 50,000 pixels
    per image of a device's batch: losses.supervised_loss); "student_iterations",
    "teacher_iterations", "eval_every", "teacher_eval_every"; "weights" (the paper's LossWeights
    for the student)."""
    raw, path = read_preset(dataset)
    check_protocol(protocol)
    if int(num_devices) < 1:
        raise ValueError(f"num_devices={num_devices!r}: expected a positive integer")
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"preset {path}: missing key(s) {missing}")
    weights_key = f"weights_{student}"
    if weights_key not in raw:
        raise ValueError(
            f"preset {path}: no {weights_key}; students with weights: "
            f"{[k[len('weights_') :] for k in raw if k.startswith('weights_')]}"
        )
    batch = {
        "student": _per_device(raw, "batch_total", num_devices, path),
        "teacher": _per_device(raw, "teacher_batch_total", num_devices, path),
    }
    train_images = int(raw["train_images"])
    labeled = labeled_count(train_images, protocol)
    unlabeled = train_images - labeled if protocol != "full" else train_images
    # An official epoch: enough iterations for the longer of the two lists (config.py max_samples).
    epoch_iterations = {
        role: max(1, math.ceil(max(labeled, unlabeled) / (b * num_devices)))
        for role, b in batch.items()
    }

    def iterations(role: str) -> int:
        if f"{role}_iterations" in raw:
            table, scale = raw[f"{role}_iterations"], 1
        elif f"{role}_epochs" in raw:
            table, scale = raw[f"{role}_epochs"], epoch_iterations[role]
        else:
            raise ValueError(f"preset {path}: needs {role}_iterations or {role}_epochs")
        if protocol not in table:
            raise ValueError(
                f"preset {path}: {role} schedule has no protocol {protocol!r} (has "
                f"{sorted(table)})"
            )
        return int(table[protocol]) * scale

    def eval_every(role: str) -> int:
        if "eval_every" in raw:
            return int(raw["eval_every"])
        return int(raw["eval_every_epochs"]) * epoch_iterations[role]

    gpus = int(raw.get("official_gpus", 1))
    official_lr = _per_arch(raw["lr"], (student,), "lr", path)[student]
    official_teacher_lr = _per_arch(raw["teacher_lr"], TEACHERS, "teacher_lr", path)
    official_wd = float(raw.get("weight_decay", DEFAULT_WEIGHT_DECAY))
    return {
        "crop_size": int(raw["crop_size"]),
        "batch_size": batch["student"],
        "teacher_batch_size": batch["teacher"],
        "lr": official_lr / gpus,
        "teacher_lr": {arch: lr / gpus for arch, lr in official_teacher_lr.items()},
        "weight_decay": official_wd * gpus,
        "warmup_fraction": float(raw.get("warmup_fraction", 0.0)),
        "cps_weight": float(raw.get("cps_weight", TeacherConfig.cps_weight)),
        "ohem": bool(raw["ohem"]),
        "student_iterations": iterations("student"),
        "teacher_iterations": iterations("teacher"),
        "eval_every": eval_every("student"),
        "teacher_eval_every": eval_every("teacher"),
        "weights": LossWeights(**raw[weights_key]),
    }


def preset_optim(preset: dict, role: str, iterations: int, arch: str | None = None) -> OptimConfig:
    """The OptimConfig of a "student" or "teacher" run of `iterations` under a resolved preset: its
    learning rate (a teacher's by `arch`; arch may be left out when both teachers share one),
    weight decay, and a linear warm-up over the preset's warmup_fraction of the run."""
    if role == "student":
        lr = preset["lr"]
    elif role == "teacher":
        rates = preset["teacher_lr"]
        if arch is not None:
            if arch not in rates:
                raise ValueError(f"preset_optim: no teacher lr for {arch!r} (has {sorted(rates)})")
            lr = rates[arch]
        elif len(set(rates.values())) == 1:
            lr = next(iter(rates.values()))
        else:
            raise ValueError(
                f"preset_optim: the teachers' learning rates differ ({rates}); pass arch"
            )
    else:
        raise ValueError(f"preset_optim: role {role!r}, expected 'student' or 'teacher'")
    return OptimConfig(
        lr=lr,
        weight_decay=preset.get("weight_decay", DEFAULT_WEIGHT_DECAY),
        warmup_iterations=round(preset["warmup_fraction"] * iterations),
    )


def preset_configs(
    dataset: str,
    protocol: str,
    student: str = "deeplabv3plus_resnet18",
    num_devices: int = 1,
    *,
    data: dict | None = None,
    iterations: int | None = None,
    teacher_iterations: int | None = None,
    eval_every: int | None = None,
    teacher_eval_every: int | None = None,
    imagenet: dict[str, str | None] | None = None,
    seed: int = 0,
) -> tuple[DistillConfig, dict[str, TeacherConfig]]:
    """The one step from a dataset preset to runs: the student's DistillConfig (no teacher files
    yet) and each teacher's TeacherConfig by architecture, for one protocol on `num_devices`
    devices, with the preset's whole recipe (crop, batch per device and role, learning rates with
    warm-up, weight decay, CPS weight, OHEM, schedules, the paper's weights). What is given (not
    None) wins: `data`, DataConfig fields (root, split_dir, split_out_dir, num_workers,
    crop_size, batch_size: the latter for both roles); the schedules (eval_every for both roles
    unless teacher_eval_every is given); `imagenet`, {arch: ImageNet file} (None: from scratch)."""
    preset = load_preset(dataset, protocol, student, num_devices)
    given = {key: value for key, value in (data or {}).items() if value is not None}
    data_cfg = DataConfig(
        **{
            "dataset": dataset,
            "protocol": protocol,
            "seed": seed,
            "crop_size": preset["crop_size"],
            "batch_size": preset["batch_size"],
            **given,
        }
    )
    imagenet = imagenet or {}
    iterations = iterations or preset["student_iterations"]
    distill = DistillConfig(
        student=student,
        data=data_cfg,
        optim=preset_optim(preset, "student", iterations),
        weights=preset["weights"],
        iterations=iterations,
        eval_every=min(eval_every or preset["eval_every"], iterations),
        ohem=preset["ohem"],
        backbone_weights=imagenet.get(student),
        seed=seed,
    )
    teacher_iterations = teacher_iterations or preset["teacher_iterations"]
    # Teachers have their own official total batch (Cityscapes: 8 against the students' 16).
    teacher_data = dataclasses.replace(
        data_cfg, batch_size=given.get("batch_size", preset["teacher_batch_size"])
    )
    teacher_eval = min(
        teacher_eval_every or eval_every or preset["teacher_eval_every"], teacher_iterations
    )
    teachers = {
        arch: TeacherConfig(
            arch=arch,
            data=teacher_data,
            optim=preset_optim(preset, "teacher", teacher_iterations, arch),
            cps_weight=preset["cps_weight"],
            iterations=teacher_iterations,
            eval_every=teacher_eval,
            ohem=preset["ohem"],
            backbone_weights=imagenet.get(arch),
            seed=seed,
        )
        for arch in TEACHERS
    }
    return distill, teachers
