"""A study's options: `resolve_study` turns what the user gave into one frozen `StudyConfig`,
resolving every default once (--smoke, the GPUs found and the preset's GPU budget, the preset's
study size, the regime, the results folder) and checking every value before Ray starts and before
anything is written. What stays open is what the dataset preset decides per protocol and per run
role (schedules, crop, batch): `engine.presets.preset_configs` resolves those, in one place.

A StudyConfig is made of parts, each a frozen dataclass that checks its own values: `data` (what
is learned from), `budget` (how big the study is), `cluster` (where and how trials run), `storage`
(what is written where) and `teachers`; the student, seed and console switches sit on the config
itself. On the command line and in `from_options` / `options()` the options keep flat names
(`OPTIONS`: option -> part and field). The checks against the file system, torch and Ray are
validate.py's, run by plan.plan_study before Ray starts.

Also here: the command REPORT.md suggests for a budget that separates the rows
(`separating_command`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from ..config import DATASETS, STUDENTS, check_protocol
from ..engine.presets import read_preset
from ..models.pretrained import check_regime, default_regime
from ..schema import ABLATION_VARIANTS

# --smoke: one protocol, two search trials, one ablation seed, a few iterations of everything.
SMOKE = dict(
    protocols=("1/8",),
    num_samples=2,
    seeds=1,
    iterations=8,
    teacher_iterations=8,
    eval_every=4,
    crop_size=48,
    batch_size=2,
    loader_workers=0,
)
TEACHER_TARGETS = ("shared", "live")
# study option <- key of a preset's named budget section (<name>_budget: gpu_budget, ...)
BUDGET_KEYS = {
    "protocols": "protocols",
    "iterations": "student_iterations",
    "teacher_iterations": "teacher_iterations",
    "batch_size": "batch_size",
    "crop_size": "crop_size",
    "eval_every": "eval_every",
    "teacher_eval_every": "teacher_eval_every",
    "num_samples": "search_trials",
    "seeds": "ablation_seeds",
    "trials_per_gpu": "trials_per_gpu",
}


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


def detect_gpus(address: str | None) -> int:
    """GPUs of this machine (no --address), or of the cluster at `address`: what its live nodes
    have or, on an autoscaling cluster whose GPU workers start at zero, what its node types may
    start (cluster.cluster_gpus), whichever is more."""
    if address is None:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    from .cluster import connected_gpus

    return connected_gpus(address)


def gpu_memory(address: str | None) -> tuple[float, str] | None:
    """(GiB, name) of the GPU trials run on: this machine's first GPU (no --address), or the
    smallest GPU type of the cluster at `address` (memory.ACCELERATOR_GIB of the types
    cluster.cluster_accelerators finds); None when unknown."""
    if address is None:
        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
        return props.total_memory / 2**30, props.name
    from .cluster import connected_accelerators
    from .memory import ACCELERATOR_GIB

    known = [
        (ACCELERATOR_GIB[name], name)
        for name in connected_accelerators(address)
        if name in ACCELERATOR_GIB
    ]
    return min(known) if known else None


def budget_names(dataset: str) -> list[str]:
    """The named budgets of a dataset's preset (its <name>_budget sections)."""
    return sorted(k[: -len("_budget")] for k in read_preset(dataset)[0] if k.endswith("_budget"))


def named_budget(dataset: str, name: str) -> dict[str, Any]:
    """The preset's `<name>_budget` section as study option names (protocols as a tuple, every
    other value an int); {} for "gpu" when the preset has none."""
    raw = read_preset(dataset)[0].get(f"{name}_budget")
    if raw is None:
        if name == "gpu":
            return {}
        raise ValueError(
            f"--budget {name}: preset {dataset}.yaml has no {name}_budget section; its budgets: "
            f"{', '.join(budget_names(dataset)) or 'none'}"
        )
    unknown = sorted(set(raw) - set(BUDGET_KEYS.values()))
    if unknown:
        raise ValueError(
            f"preset {dataset}.yaml: {name}_budget has unknown key(s) {unknown}; "
            f"expected some of {sorted(BUDGET_KEYS.values())}"
        )
    return {
        option: tuple(raw[key]) if option == "protocols" else int(raw[key])
        for option, key in BUDGET_KEYS.items()
        if key in raw
    }


def gpu_budget(dataset: str) -> dict[str, Any]:
    """The preset's `gpu_budget` section ({} when it has none), as study option names."""
    return named_budget(dataset, "gpu")


def study_budget(dataset: str) -> dict[str, int]:
    """{"num_samples", "seeds"}: a dataset's default study size (16 search trials and 2 seeds per
    ablation row unless its preset says otherwise)."""
    raw = read_preset(dataset)[0]
    return {
        "num_samples": int(raw.get("search_trials", BudgetOptions.num_samples)),
        "seeds": int(raw.get("ablation_seeds", BudgetOptions.seeds)),
    }


def resolve_study(
    smoke: bool = False,
    gpus: Callable[[str | None], int] | None = None,
    budget: str | None = None,
    **given: Any,
) -> tuple[StudyConfig, str]:
    """The study's config from the options a user gave (keyword arguments named as OPTIONS; None
    means not given), and a sentence saying where its trials run.

    Explicit options always win; then --smoke's values, or the preset's named `budget`
    (--budget NAME: its NAME_budget section); then, when --gpus-per-trial is not given and
    `gpus(address)` (default: detect_gpus) finds GPUs, one GPU per trial with the preset's GPU
    budget (not over a named budget); then the preset's study size, the dataset's regime and
    results folder (results/<dataset>-<budget> for a named budget), and StudyConfig's own
    defaults."""
    values = {key: value for key, value in given.items() if value is not None}
    dataset = values.get("dataset", DataOptions.dataset)
    if smoke and budget is not None:
        raise ValueError(f"--smoke and --budget {budget}: give one of them")
    if smoke:
        values = {**SMOKE, **values}
    if budget is not None:
        values = {**named_budget(dataset, budget), **values, "budget": budget}
        values.setdefault("output_dir", f"results/{dataset}-{budget}")
    if "gpus_per_trial" in values:
        devices = f"--gpus-per-trial {values['gpus_per_trial']} (given)"
    elif (found := (gpus or detect_gpus)(values.get("address"))) > 0:
        on_top = {} if budget is not None else gpu_budget(dataset)
        applied = {key: value for key, value in on_top.items() if key not in values}
        values.update(applied, gpus_per_trial=1)
        shared = values.get("trials_per_gpu", 1)
        per_gpu = "one GPU per trial" if shared == 1 else f"{shared} trials share each GPU"
        devices = (
            f"{found} GPU(s) found: {per_gpu}, up to {found * shared} trial(s) at a time; GPU "
            "budget applied: "
            f"{', '.join(f'{k}={v}' for k, v in applied.items()) or 'none (all given)'} "
            "(--gpus-per-trial 0 trains on the CPU)"
        )
    else:
        values["gpus_per_trial"] = 0
        devices = "no GPU found: training on the CPU"
    values = {**study_budget(dataset), **values}
    values.setdefault("workers_per_trial", max(1, values["gpus_per_trial"]))
    values.setdefault("pretrained", default_regime(dataset))
    values.setdefault("output_dir", "results/smoke" if smoke else f"results/{dataset}")
    for name in ("protocols", "ablation_variants"):
        if name in values:
            values[name] = tuple(values[name])
    return StudyConfig.from_options(**values), devices


def study_name(cfg: StudyConfig) -> str:
    return os.path.basename(os.path.abspath(cfg.storage.output_dir))


def separating_command(cfg: StudyConfig) -> tuple[str, str]:
    """(command, note): what REPORT.md tells a user to run for results whose rows may be told
    apart (more iterations and seeds than the first-run budget), and where it runs."""
    base = "python experiments/tune_loss_weights.py"
    if cfg.budget.name == "showcase":
        return "", ""  # the showcase is that command: its report stands on its own numbers
    if cfg.data.dataset == "synthetic":
        return (
            f"{base} --budget showcase",
            " (on 2 CPU cores within the hour; its measured verdict is quoted below)",
        )
    return (
        f"{base} --dataset {cfg.data.dataset} --data-root {cfg.data.data_root} --protocols "
        f"{' '.join(cfg.budget.protocols)} --gpus-per-trial 1 --seeds 3",
        " (the paper's schedule, three seeds per row)",
    )
