"""What a study's config is: `StudyConfig`, made of parts, each a frozen dataclass that checks its
own values: `data` (what is learned from), `budget` (how big the study is), `cluster` (where and
how trials run), `storage` (what is written where) and `teachers`; the student, seed and console
switches sit on the config itself. On the command line and in `from_options` / `options()` the
options keep flat names (`OPTIONS`: option -> part and field).

options.resolve_study makes one from what the user gave; the checks against the file system,
torch and Ray are validate.py's, run by plan.plan_study before Ray starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

from ..config import DATASETS, STUDENTS, TEACHER_DEEP, TEACHER_WIDE, check_protocol
from ..models.pretrained import check_regime
from ..schema import ABLATION_VARIANTS

TEACHER_TARGETS = ("shared", "live")


def _at_least(part: Any, names: tuple[str, ...], low: int, optional: bool = False) -> None:
    """Raise naming the option (--dashed-name) when one of `names` is below `low` (None allowed
    when `optional`)."""
    for name in names:
        value = getattr(part, name)
        if optional and value is None:
            continue
        if int(value) < low:
            raise ValueError(f"--{name.replace('_', '-')}={value}: expected an integer >= {low}")


@dataclass(frozen=True)
class DataOptions:
    """What the study learns from: the dataset, its folders and the networks' starting weights."""

    dataset: str = "synthetic"
    data_root: str | None = None
    split_dir: str | None = None
    loader_workers: int = 1
    pretrained: str = "none"  # "imagenet" | "none" (from scratch)
    # a folder holding torchvision's ImageNet files (offline machines)
    pretrained_dir: str | None = None

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if self.dataset != "synthetic" and not self.data_root:
            raise ValueError(f"--dataset {self.dataset} needs --data-root")
        _at_least(self, ("loader_workers",), 0)
        check_regime(self.pretrained)


@dataclass(frozen=True)
class BudgetOptions:
    """How big the study is: its protocols, runs, schedules and images per step. None: the
    dataset preset decides per protocol or per run role."""

    name: str | None = field(default=None, metadata={"option": "budget"})  # --budget NAME
    protocols: tuple[str, ...] = ("1/8", "1/4")
    num_samples: int = 16  # search trials per protocol, the paper's point included
    seeds: int = 2  # seeds per ablation row
    iterations: int | None = None  # student iterations; None: each protocol's preset schedule
    teacher_iterations: int | None = None
    eval_every: int | None = None
    teacher_eval_every: int | None = None  # None: eval_every, else the preset's
    crop_size: int | None = None
    batch_size: int | None = None  # images per device, per run role
    ablation: bool = True
    ablation_variants: tuple[str, ...] = ABLATION_VARIANTS  # rows of the ablation table to run

    def __post_init__(self) -> None:
        if not self.protocols:
            raise ValueError("--protocols: give at least one protocol")
        for protocol in self.protocols:
            check_protocol(protocol)
        repeated = sorted({p for p in self.protocols if self.protocols.count(p) > 1})
        if repeated:
            raise ValueError(
                f"--protocols {' '.join(self.protocols)}: {', '.join(repeated)} given more than "
                f"once (one study per protocol)"
            )
        unknown = sorted(set(self.ablation_variants) - set(ABLATION_VARIANTS))
        if unknown:
            raise ValueError(
                f"--ablation-variants {unknown}: expected some of {', '.join(ABLATION_VARIANTS)}"
            )
        _at_least(self, ("num_samples", "seeds"), 1)
        optional = (
            "iterations",
            "teacher_iterations",
            "eval_every",
            "teacher_eval_every",
            "crop_size",
            "batch_size",
        )
        _at_least(self, optional, 1, optional=True)


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how trials run: the cluster, each trial's workers and devices, how many at once,
    and how failures are retried."""

    address: str | None = None
    gpus_per_trial: int = 0
    # >1: that many single-worker trials share each GPU (each asks Ray for 1/N GPU). Small models
    # are launch-bound: one trial keeps an H100 ~20-30% busy (docs/benchmarks.md, section 7).
    trials_per_gpu: int = 1
    workers_per_trial: int = 1
    cpus_per_worker: int = 1
    # None: what the cluster holds, asked before each phase
    max_concurrent_trials: int | None = None
    max_failures: int = 1  # Ray Train restarts of a run after a worker failure
    # a Train worker group not started by then is retried ...
    worker_start_timeout_s: float = 600.0
    worker_start_retries: int = 2  # ... this many times, then its trial fails (cluster.py)

    def __post_init__(self) -> None:
        _at_least(self, ("workers_per_trial", "cpus_per_worker", "trials_per_gpu"), 1)
        _at_least(self, ("max_concurrent_trials",), 1, optional=True)
        _at_least(self, ("gpus_per_trial", "max_failures", "worker_start_retries"), 0)
        if not self.worker_start_timeout_s > 0:
            raise ValueError(
                f"--worker-start-timeout={self.worker_start_timeout_s}: expected seconds > 0"
            )
        if self.gpus_per_trial and self.gpus_per_trial % self.workers_per_trial:
            raise ValueError(
                f"--gpus-per-trial={self.gpus_per_trial} must be a multiple of "
                f"--workers-per-trial={self.workers_per_trial} (each worker drives whole GPUs)"
            )
        if self.trials_per_gpu > 1 and (self.gpus_per_trial != 1 or self.workers_per_trial != 1):
            raise ValueError(
                f"--trials-per-gpu={self.trials_per_gpu} shares one GPU between single-worker "
                "trials: it needs --gpus-per-trial 1 and --workers-per-trial 1 (got "
                f"{self.gpus_per_trial} and {self.workers_per_trial})"
            )

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_trial else "cpu"

    @property
    def devices_per_trial(self) -> float:
        """Devices one trial holds (a fraction of a GPU when trials share one): device-hours count
        these."""
        if self.gpus_per_trial:
            return self.gpus_per_worker * self.workers_per_trial
        return self.workers_per_trial * self.cpus_per_worker

    @property
    def gpus_per_worker(self) -> float:
        whole = self.gpus_per_trial // self.workers_per_trial  # an int unless trials share a GPU
        return whole / self.trials_per_gpu if self.trials_per_gpu > 1 else whole


@dataclass(frozen=True)
class StorageOptions:
    """Where the study keeps what it writes, and what it keeps."""

    output_dir: str = "results/synthetic"
    storage_path: str | None = None  # default: <output_dir>/ray; s3://... on a cluster
    optuna_storage: str | None = None  # default: sqlite:///<output_dir>/optuna.db
    resume: bool = False
    keep_trial_weights: bool = False  # keep every trial's Train run folder (weights + state)
    # keep each protocol's store of teacher targets after its last phase
    keep_targets: bool = False
    export_ablation_students: bool = False  # models/<protocol>/<variant>.pt per ablation row
    mlflow_uri: str | None = None  # an MLflow tracking URI: every trial logged there (tracking.py)

    def resolved_storage(self) -> str:
        path = self.storage_path or os.path.join(self.output_dir, "ray")
        return path if "://" in path else os.path.abspath(path)  # Ray needs absolute local paths

    def resolved_optuna_storage(self) -> str:
        return (
            self.optuna_storage
            or f"sqlite:///{os.path.abspath(os.path.join(self.output_dir, 'optuna.db'))}"
        )


@dataclass(frozen=True)
class TeacherOptions:
    """The teachers: trained files given (else trained by the study) and how trials get their
    targets."""

    deep_checkpoint: str | None = field(
        default=None, metadata={"option": "teacher_deep_checkpoint"}
    )
    wide_checkpoint: str | None = field(
        default=None, metadata={"option": "teacher_wide_checkpoint"}
    )
    # "shared": the teachers' targets computed once per protocol, read by every trial
    # (phases/targets.py); "live": every trial runs the teachers itself (the same training,
    # docs/benchmarks.md section 9)
    targets: str = field(default="shared", metadata={"option": "teacher_targets"})

    @property
    def given(self) -> dict[str, str | None]:
        """{architecture: the trained file given for it, or None (the study trains it)}."""
        return {TEACHER_DEEP: self.deep_checkpoint, TEACHER_WIDE: self.wide_checkpoint}

    def __post_init__(self) -> None:
        if self.targets not in TEACHER_TARGETS:
            raise ValueError(
                f"--teacher-targets {self.targets!r}: expected one of {', '.join(TEACHER_TARGETS)}"
            )


PARTS = {
    "data": DataOptions,
    "budget": BudgetOptions,
    "cluster": ClusterOptions,
    "storage": StorageOptions,
    "teachers": TeacherOptions,
}


@dataclass(frozen=True)
class StudyConfig:
    """Every option of a study, resolved (`resolve_study`) and checked, in parts; each part checks
    its own values. Options are named flat on the command line and in `from_options` /
    `options` (a field's name, or the "option" of its metadata): OPTIONS says which part holds
    each."""

    data: DataOptions = DataOptions()
    budget: BudgetOptions = BudgetOptions()
    cluster: ClusterOptions = ClusterOptions()
    storage: StorageOptions = StorageOptions()
    teachers: TeacherOptions = TeacherOptions()
    student: str = "deeplabv3plus_resnet18"
    seed: int = 0
    # torch.compile: students and CPS branches compiled, frozen teachers captured in CUDA graphs
    # (engine/device.compile_for_device); None = on CUDA only, False = off
    compile: bool | None = None
    verbose: bool = True
    verbose_ray: bool = False  # Ray Train's per-report INFO lines on the console (else: log files)

    def __post_init__(self) -> None:
        if self.student not in STUDENTS:
            raise ValueError(f"--student {self.student!r}: expected one of {', '.join(STUDENTS)}")

    @classmethod
    def from_options(cls, **options: Any) -> "StudyConfig":
        """The config of flat options (named as OPTIONS; the rest keep their defaults)."""
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(
                f"unknown study option(s) {unknown}; expected some of {sorted(OPTIONS)}"
            )
        parts: dict[str, dict[str, Any]] = {name: {} for name in PARTS}
        top = {}
        for option, value in options.items():
            part, name = OPTIONS[option]
            (parts[part] if part else top)[name] = value
        return cls(**{name: PARTS[name](**given) for name, given in parts.items()}, **top)

    def options(self) -> dict[str, Any]:
        """The flat options of this config (the inverse of from_options)."""
        return {
            option: getattr(getattr(self, part) if part else self, name)
            for option, (part, name) in OPTIONS.items()
        }


def _options() -> dict[str, tuple[str | None, str]]:
    table: dict[str, tuple[str | None, str]] = {}
    for part, kind in [*PARTS.items(), (None, StudyConfig)]:
        for f in fields(kind):
            if f.name not in PARTS:
                table[f.metadata.get("option", f.name)] = (part, f.name)
    return table


# flat option name -> (part of StudyConfig, or None for its own fields; field name in it)
OPTIONS = _options()
