"""Flat per-dataset YAML presets (mgd_ray/presets/<dataset>.yaml) resolved for one protocol."""
from __future__ import annotations

import math
from pathlib import Path

import yaml

from ..config import DATASETS, LossWeights, OptimConfig, TeacherConfig, check_protocol
from ..data import labeled_count

PRESET_DIR = Path(__file__).resolve().parent.parent / "presets"
_REQUIRED = ("dataset", "crop_size", "batch_size", "train_images", "lr", "teacher_lr", "ohem")


def load_preset(dataset: str, protocol: str = "1/8", student: str = "deeplabv3plus_resnet18",
                num_devices: int = 1) -> dict:
    """{"crop_size", "batch_size" (per device), "lr", "teacher_lr", "warmup_fraction", "cps_weight", "ohem",
    "teacher_iterations", "student_iterations", "eval_every", "weights" (LossWeights)} for one
    dataset and protocol.

    Epoch-based presets become iterations here: an epoch is one pass over the unlabeled list with
    batch_size * num_devices unlabeled images per iteration."""
    if dataset not in DATASETS:
        raise ValueError(f"preset {dataset!r}: expected one of {', '.join(DATASETS)}")
    check_protocol(protocol)
    path = PRESET_DIR / f"{dataset}.yaml"
    with open(path) as f:
        raw = yaml.safe_load(f)
    missing = [k for k in _REQUIRED if k not in (raw or {})]
    if missing:
        raise ValueError(f"preset {path}: missing key(s) {missing}")
    weights_key = f"weights_{student}"
    if weights_key not in raw:
        raise ValueError(f"preset {path}: no {weights_key}; students with weights: "
                         f"{[k[len('weights_'):] for k in raw if k.startswith('weights_')]}")
    per_iteration = int(raw["batch_size"]) * num_devices
    unlabeled = raw["train_images"] - labeled_count(raw["train_images"], protocol) if protocol != "full" \
        else raw["train_images"]
    epoch_iterations = max(1, math.ceil(unlabeled / per_iteration))

    def iterations(kind: str) -> int:
        if f"{kind}_iterations" in raw:
            table = raw[f"{kind}_iterations"]
            scale = 1
        elif f"{kind}_epochs" in raw:
            table, scale = raw[f"{kind}_epochs"], epoch_iterations
        else:
            raise ValueError(f"preset {path}: needs {kind}_iterations or {kind}_epochs")
        if protocol not in table:
            raise ValueError(f"preset {path}: {kind} schedule has no protocol {protocol!r} (has {sorted(table)})")
        return int(table[protocol]) * scale

    eval_every = int(raw["eval_every"]) if "eval_every" in raw else int(raw["eval_every_epochs"]) * epoch_iterations
    return {"crop_size": int(raw["crop_size"]), "batch_size": int(raw["batch_size"]), "lr": float(raw["lr"]),
            "teacher_lr": float(raw["teacher_lr"]), "warmup_fraction": float(raw.get("warmup_fraction", 0.0)),
            "cps_weight": float(raw.get("cps_weight", TeacherConfig.cps_weight)),
            "ohem": bool(raw["ohem"]),
            "teacher_iterations": iterations("teacher"), "student_iterations": iterations("student"),
            "eval_every": eval_every, "weights": LossWeights(**raw[weights_key])}


def preset_optim(preset: dict, role: str, iterations: int) -> OptimConfig:
    """The OptimConfig of a "student" or "teacher" run of `iterations` under a resolved preset: its
    learning rate, and a linear warm-up over the preset's warmup_fraction of the run."""
    lr = {"student": preset["lr"], "teacher": preset["teacher_lr"]}[role]
    return OptimConfig(lr=lr, warmup_iterations=round(preset["warmup_fraction"] * iterations))


def study_budget(dataset: str) -> dict:
    """{"search_trials", "ablation_seeds"}: the default study size for a dataset (16 trials and 2
    seeds unless its preset says otherwise)."""
    if dataset not in DATASETS:
        raise ValueError(f"preset {dataset!r}: expected one of {', '.join(DATASETS)}")
    with open(PRESET_DIR / f"{dataset}.yaml") as f:
        raw = yaml.safe_load(f) or {}
    return {"search_trials": int(raw.get("search_trials", 16)), "ablation_seeds": int(raw.get("ablation_seeds", 2))}
