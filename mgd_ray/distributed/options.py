"""A study's options: `StudyConfig`, every option checked when it is made (before Ray starts and
before anything is written), with the dataset's default study size (`study_budget`), and whether
they match the study an --output-dir already holds (`check_study_folder`)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from typing import Any

from ..config import DATASETS, STUDENTS, check_protocol
from ..engine.presets import read_preset
from ..models.pretrained import check_regime, default_regime
from ..schema import ABLATION_VARIANTS
from .checks import check_protocols_unique


def study_budget(dataset: str) -> dict:
    """{"search_trials", "ablation_seeds"}: the default study size for a dataset (16 trials and 2
    seeds unless its preset says otherwise)."""
    raw, _ = read_preset(dataset)
    return {"search_trials": int(raw.get("search_trials", 16)), "ablation_seeds": int(raw.get("ablation_seeds", 2))}


@dataclass(frozen=True)
class StudyConfig:
    output_dir: str = "results/synthetic"
    dataset: str = "synthetic"
    data_root: str | None = None
    split_dir: str | None = None
    protocols: tuple[str, ...] = ("1/8", "1/4")
    student: str = "deeplabv3plus_resnet18"
    num_samples: int | None = None  # search trials per protocol, the paper's point included; None: preset's
    seeds: int | None = None  # seeds per ablation row; None: the preset's
    iterations: int | None = None  # student iterations; None = the dataset preset's
    teacher_iterations: int | None = None
    eval_every: int | None = None
    crop_size: int | None = None
    batch_size: int | None = None
    loader_workers: int = 1
    gpus_per_trial: int = 0
    # >1: that many single-worker trials share each GPU (each asks Ray for 1/N GPU). Small models are
    # launch-bound: one trial keeps an H100 ~20-30% busy (docs/benchmarks.md, section 7).
    trials_per_gpu: int = 1
    workers_per_trial: int = 1
    cpus_per_worker: int = 1
    max_concurrent_trials: int | None = None
    max_failures: int = 1  # Ray Train restarts of a run after a worker failure
    worker_start_timeout_s: float = 600.0  # a Train worker group not started by then is retried ...
    worker_start_retries: int = 2  # ... this many times, then its trial fails (cluster.py)
    storage_path: str | None = None  # default: <output_dir>/ray; s3://... on a cluster
    optuna_storage: str | None = None  # default: sqlite:///<output_dir>/optuna.db
    address: str | None = None
    resume: bool = False
    ablation: bool = True
    ablation_variants: tuple[str, ...] = ABLATION_VARIANTS  # rows of the ablation table to run
    seed: int = 0
    teacher_deep_checkpoint: str | None = None
    teacher_wide_checkpoint: str | None = None
    pretrained: str | None = None  # "imagenet" | "none" (from scratch); None: the dataset's default
    pretrained_dir: str | None = None  # a folder holding torchvision's ImageNet files (offline machines)
    verbose: bool = True
    verbose_ray: bool = False  # Ray Train's per-report INFO lines on the console (else: log files)
    keep_trial_weights: bool = False  # keep every trial's Train run folder (weights + state)
    export_ablation_students: bool = False  # models/<protocol>/<variant>.pt per ablation row

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"--dataset {self.dataset!r}: expected one of {', '.join(DATASETS)}")
        if self.dataset != "synthetic":
            if not self.data_root:
                raise ValueError(f"--dataset {self.dataset} needs --data-root")
            if not os.path.isdir(self.data_root):
                raise FileNotFoundError(f"--data-root {self.data_root}: no such folder")
        if not self.protocols:
            raise ValueError("--protocols: give at least one protocol")
        for protocol in self.protocols:
            check_protocol(protocol)
        check_protocols_unique(self.protocols)
        unknown = sorted(set(self.ablation_variants) - set(ABLATION_VARIANTS))
        if unknown:
            raise ValueError(f"--ablation-variants {unknown}: expected some of {', '.join(ABLATION_VARIANTS)}")
        budget = study_budget(self.dataset)
        if self.num_samples is None:
            object.__setattr__(self, "num_samples", budget["search_trials"])
        if self.seeds is None:
            object.__setattr__(self, "seeds", budget["ablation_seeds"])
        if self.student not in STUDENTS:
            raise ValueError(f"--student {self.student!r}: expected one of {', '.join(STUDENTS)}")
        for name in ("num_samples", "seeds", "workers_per_trial", "cpus_per_worker", "trials_per_gpu"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)}: expected an integer >= 1")
        for name in ("iterations", "teacher_iterations", "eval_every", "crop_size", "batch_size",
                     "max_concurrent_trials"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={value}: expected an integer >= 1")
        if self.gpus_per_trial < 0 or self.loader_workers < 0 or self.max_failures < 0 or self.worker_start_retries < 0:
            raise ValueError("--gpus-per-trial, --loader-workers, --max-failures and --worker-start-retries must be >= 0")
        if not self.worker_start_timeout_s > 0:
            raise ValueError(f"--worker-start-timeout={self.worker_start_timeout_s}: expected seconds > 0")
        if self.gpus_per_trial and self.gpus_per_trial % self.workers_per_trial:
            raise ValueError(f"--gpus-per-trial={self.gpus_per_trial} must be a multiple of "
                             f"--workers-per-trial={self.workers_per_trial} (each worker drives whole GPUs)")
        if self.trials_per_gpu > 1 and (self.gpus_per_trial != 1 or self.workers_per_trial != 1):
            raise ValueError(f"--trials-per-gpu={self.trials_per_gpu} shares one GPU between single-worker trials: "
                             f"it needs --gpus-per-trial 1 and --workers-per-trial 1 (got {self.gpus_per_trial} "
                             f"and {self.workers_per_trial})")
        object.__setattr__(self, "pretrained", check_regime(self.pretrained or default_regime(self.dataset)))
        for name in ("teacher_deep_checkpoint", "teacher_wide_checkpoint", "split_dir", "pretrained_dir"):
            path = getattr(self, name)
            if path and "://" not in path and not os.path.exists(path):
                raise FileNotFoundError(f"--{name.replace('_', '-')} {path}: no such file or folder")

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_trial else "cpu"

    @property
    def devices_per_trial(self) -> float:
        """Devices one trial holds (a fraction of a GPU when trials share one): device-hours count these."""
        if self.gpus_per_trial:
            return self.gpus_per_worker * self.workers_per_trial
        return self.workers_per_trial * self.cpus_per_worker

    @property
    def gpus_per_worker(self) -> float:
        whole = self.gpus_per_trial // self.workers_per_trial  # an int unless trials share a GPU
        return whole / self.trials_per_gpu if self.trials_per_gpu > 1 else whole

    def resolved_storage(self) -> str:
        path = self.storage_path or os.path.join(self.output_dir, "ray")
        return path if "://" in path else os.path.abspath(path)  # Ray needs absolute local paths

    def resolved_optuna_storage(self) -> str:
        return self.optuna_storage or f"sqlite:///{os.path.abspath(os.path.join(self.output_dir, 'optuna.db'))}"



# What must match for --resume to continue a study rather than start a different one.
_IDENTITY = ("dataset", "data_root", "protocols", "student", "num_samples", "seeds", "iterations",
             "teacher_iterations", "crop_size", "batch_size", "seed", "ablation", "ablation_variants")


def study_name(cfg: StudyConfig) -> str:
    return os.path.basename(os.path.abspath(cfg.output_dir))


def study_identity(cfg: StudyConfig) -> dict[str, Any]:
    """The options study.json keeps under "identity" (tuples as lists, as JSON reads them back)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items() if k in _IDENTITY}


def check_study_folder(cfg: StudyConfig) -> dict[str, Any] | None:
    """The study.json of --output-dir when --resume continues it (None for a new study); raise when
    the folder already holds a study and --resume is not given, when --resume finds none, or when
    the study was started with other options. Reads only: a folder that holds a study is never
    reused silently."""
    path = os.path.join(cfg.output_dir, "study.json")
    if not os.path.exists(path):
        if cfg.resume:
            raise FileNotFoundError(f"--resume: {path} does not exist; nothing to resume")
        return None
    if not cfg.resume:
        raise FileExistsError(f"{cfg.output_dir} already holds a study (study.json): pass --resume to "
                              f"continue it, or choose another --output-dir")
    with open(path) as f:
        study = json.load(f)
    changed = {k: (study["identity"].get(k), v) for k, v in study_identity(cfg).items()
               if study["identity"].get(k) != v}
    if changed:
        raise ValueError(f"--resume: {path} was started with different options (option: (study, now)): {changed}")
    return study
