"""Typed, frozen configuration for one teacher or student training run.

A Ray Train worker receives one of these dataclasses itself (distributed/trial.py's JOB_KEY); a
Tune trial's config is a plain dict, which Tune keeps with the experiment's state, and `from_dict`
turns it back into them. Every value is validated before any expensive work starts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from .schema import LOSS_TERMS, PROTOCOLS, check_protocol, protocol_slug

__all__ = [
    "DATASETS",
    "PROTOCOLS",
    "STUDENTS",
    "TEACHER_DEEP",
    "TEACHER_WIDE",
    "DataConfig",
    "DistillConfig",
    "LossWeights",
    "OptimConfig",
    "TeacherConfig",
    "check_confidence_threshold",
    "check_protocol",
    "protocol_slug",
]

DATASETS = ("synthetic", "voc", "cityscapes")
EVALUATION_SETS = ("val", "holdout")

STUDENTS = ("deeplabv3plus_resnet18", "deeplabv3plus_mobilenetv2")
TEACHER_DEEP = "deeplabv3plus_resnet101"
TEACHER_WIDE = "deeplabv3plus_wide_resnet50_2"


def _check_finite_nonneg(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: expected a finite number")
    if value < 0:
        raise ValueError(f"{name}={value!r}: a loss weight must be >= 0")


def check_confidence_threshold(value: float) -> None:
    """The one check of a pseudo-label confidence threshold (DistillConfig and a search point)."""
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"confidence_threshold={value!r}: expected a number in [0, 1]")


@dataclass(frozen=True)
class LossWeights:
    """w_sup * L_sup + w_P * L_P + lambda_I * L_I + lambda_R * L_R; a zero weight removes a
    term."""

    sup: float = 1.0
    pixel: float = 1.0
    semantic: float = 0.002  # lambda_I
    region: float = 100.0  # lambda_R

    def __post_init__(self) -> None:
        for name in LOSS_TERMS:
            _check_finite_nonneg(f"weights.{name}", getattr(self, name))

    def as_dict(self) -> dict[str, float]:
        return {name: float(getattr(self, name)) for name in LOSS_TERMS}


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None  # None: the synthetic set's cache folder
    protocol: str = "1/8"
    split_dir: str | None = None  # user-provided split lists (win over everything else)
    # VOC / Cityscapes at 1/16..1/2: the paper's shipped lists (mgd_ray/splits/); False or any
    # other protocol or data: a seeded split is generated
    paper_split: bool = True
    split_out_dir: str | None = None  # where a generated split is written (next to the results)
    crop_size: int = 64
    batch_size: int = 4  # per worker, for the labeled and for each unlabeled batch
    num_workers: int = 2  # DataLoader workers per training worker
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        check_protocol(self.protocol)
        if self.dataset != "synthetic" and not self.root:
            raise ValueError(f"dataset {self.dataset!r} needs a data root (--data-root)")
        for name in ("crop_size", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: expected a positive integer")
        if self.num_workers < 0:
            raise ValueError(f"num_workers={self.num_workers!r}: expected >= 0")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4  # not applied to BN parameters and biases
    poly_power: float = 0.9
    # linear warm-up before the poly decay; 0 = the paper (ImageNet starts)
    warmup_iterations: int = 0
    grad_clip: float | None = None  # max global grad norm; None = off

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r}: expected > 0")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay!r}: expected >= 0")
        if self.warmup_iterations < 0:
            raise ValueError(f"warmup_iterations={self.warmup_iterations!r}: expected >= 0")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip!r}: expected > 0 or None")


@dataclass(frozen=True)
class TeacherConfig:
    """Cross Pseudo Supervision (two branches, CutMix) training of one teacher architecture."""

    arch: str = TEACHER_DEEP
    output_stride: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    iterations: int = 200
    eval_every: int = 100
    cps_weight: float = 1.5
    backbone_weights: str | None = None  # torchvision ImageNet checkpoint file
    ohem: bool = False
    amp: bool = True  # bf16 autocast on GPU only
    compile: bool | None = None  # compiled branches (engine/device.py); None = on CUDA only
    seed: int = 0

    def __post_init__(self) -> None:
        _check_iterations(self.iterations, self.eval_every)
        _check_finite_nonneg("cps_weight", self.cps_weight)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TeacherConfig":
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DistillConfig:
    """One MGD student run: the unit a Tune trial trains."""

    student: str = "deeplabv3plus_resnet18"
    student_output_stride: int | None = None
    teacher_deep: str = TEACHER_DEEP
    teacher_wide: str = TEACHER_WIDE
    teacher_deep_checkpoint: str | None = None  # state-dict file of the trained, frozen teacher
    teacher_wide_checkpoint: str | None = None
    # the paper's: BN with batch statistics per named batch; False = eval mode
    teacher_train_mode: bool = True
    weights: LossWeights = field(default_factory=LossWeights)
    confidence_threshold: float = 0.0  # pseudo-label pixels below it are ignored; 0 = the paper
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    iterations: int = 200
    eval_every: int = 50
    backbone_weights: str | None = None
    ohem: bool = False
    amp: bool = True
    compile: bool | None = None  # compiled student, captured teachers; None = on CUDA only
    seed: int = 0
    # A store of the teachers' targets (engine/target_store.py: a folder or s3:// URI) to read
    # instead of running the teachers; None = the teachers run in the student's run.
    targets: str | None = None
    # What the run's evaluations score: "val" (the reported score), or "holdout", the held-out
    # selection set of the training split (data.HOLDOUT_IMAGES), on which a search ranks trials.
    evaluate_on: str = "val"

    def __post_init__(self) -> None:
        _check_iterations(self.iterations, self.eval_every)
        check_confidence_threshold(self.confidence_threshold)
        if self.evaluate_on not in EVALUATION_SETS:
            raise ValueError(
                f"evaluate_on={self.evaluate_on!r}: expected one of {', '.join(EVALUATION_SETS)}"
            )
        if self.targets is not None and (not isinstance(self.targets, str) or not self.targets):
            raise ValueError(f"targets={self.targets!r}: expected a store's path or URI, or None")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DistillConfig":
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_iterations(iterations: int, eval_every: int) -> None:
    if int(iterations) < 1:
        raise ValueError(f"iterations={iterations!r}: expected a positive integer")
    if int(eval_every) < 1:
        raise ValueError(f"eval_every={eval_every!r}: expected a positive integer")


_NESTED = {"data": DataConfig, "optim": OptimConfig, "weights": LossWeights}


def _from_dict(cls, d: dict[str, Any]):
    """Build a config from a (possibly partial) dict; unknown keys are an error, not ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(
            f"{cls.__name__}: unknown option(s) {unknown}; expected some of {sorted(names)}"
        )
    kwargs = {}
    for key, value in d.items():
        nested = _NESTED.get(key)
        if nested is not None and isinstance(value, dict):
            allowed = {f.name for f in dataclasses.fields(nested)}
            bad = sorted(set(value) - allowed)
            if bad:
                raise ValueError(
                    f"{cls.__name__}.{key}: unknown option(s) {bad}; expected some of "
                    f"{sorted(allowed)}"
                )
            value = nested(**value)
        kwargs[key] = value
    return cls(**kwargs)
