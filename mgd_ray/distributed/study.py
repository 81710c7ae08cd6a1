"""The study: per partition protocol, teachers, then one Tune + Optuna search, then the ablation
runs the report needs; finally the report. Every step resumes where an interrupted study stopped.
"""
from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from ..config import (DATASETS, STUDENTS, TEACHER_DEEP, TEACHER_WIDE, DataConfig, DistillConfig, LossWeights,
                      TeacherConfig, check_protocol, protocol_slug)
from ..data import NUM_CLASSES, build_datasets
from ..engine.presets import load_preset, preset_optim, study_budget
from ..report import generate_report
from . import storage
from .records import TrialRecorder, now_iso, write_json_atomic
from .space import ABLATION_VARIANTS, ablation_point, paper_search_point, search_space, weights_from_point
from .teachers import ensure_teacher
from .trial import run_trial

# The trial function only drives a TorchTrainer; its workers hold the CPUs and GPUs. Tune needs a
# non-empty request, so the driver asks for memory only.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2}
# What must match for --resume to continue a study rather than start a different one.
_IDENTITY = ("dataset", "data_root", "protocols", "student", "num_samples", "seeds", "iterations",
             "teacher_iterations", "crop_size", "batch_size", "seed", "ablation", "ablation_variants")


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
    workers_per_trial: int = 1
    cpus_per_worker: int = 1
    max_concurrent_trials: int | None = None
    max_failures: int = 1  # Ray Train restarts of a run after a worker failure
    storage_path: str | None = None  # default: <output_dir>/ray; s3://... on a cluster
    optuna_storage: str | None = None  # default: sqlite:///<output_dir>/optuna.db
    address: str | None = None
    resume: bool = False
    ablation: bool = True
    ablation_variants: tuple[str, ...] = ABLATION_VARIANTS  # rows of the ablation table to run
    seed: int = 0
    teacher_deep_checkpoint: str | None = None
    teacher_wide_checkpoint: str | None = None
    verbose: bool = True

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
        for name in ("num_samples", "seeds", "workers_per_trial", "cpus_per_worker"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)}: expected an integer >= 1")
        for name in ("iterations", "teacher_iterations", "eval_every", "crop_size", "batch_size",
                     "max_concurrent_trials"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise ValueError(f"--{name.replace('_', '-')}={value}: expected an integer >= 1")
        if self.gpus_per_trial < 0 or self.loader_workers < 0 or self.max_failures < 0:
            raise ValueError("--gpus-per-trial, --loader-workers and --max-failures must be >= 0")
        if self.gpus_per_trial and self.gpus_per_trial % self.workers_per_trial:
            raise ValueError(f"--gpus-per-trial={self.gpus_per_trial} must be a multiple of "
                             f"--workers-per-trial={self.workers_per_trial} (each worker drives whole GPUs)")
        for name in ("teacher_deep_checkpoint", "teacher_wide_checkpoint", "split_dir"):
            path = getattr(self, name)
            if path and "://" not in path and not os.path.exists(path):
                raise FileNotFoundError(f"--{name.replace('_', '-')} {path}: no such file or folder")

    @property
    def device(self) -> str:
        return "gpu" if self.gpus_per_trial else "cpu"

    @property
    def devices_per_trial(self) -> int:
        return self.gpus_per_trial or self.workers_per_trial * self.cpus_per_worker

    def resolved_storage(self) -> str:
        path = self.storage_path or os.path.join(self.output_dir, "ray")
        return path if "://" in path else os.path.abspath(path)  # Ray needs absolute local paths

    def resolved_optuna_storage(self) -> str:
        return self.optuna_storage or f"sqlite:///{os.path.abspath(os.path.join(self.output_dir, 'optuna.db'))}"


@dataclass
class ProtocolPlan:
    """Everything one protocol's runs share, as the plain dict a trial receives."""

    protocol: str
    run: dict[str, Any]
    paper_point: dict[str, float]
    iterations: int
    teachers: dict[str, TeacherConfig] = field(repr=False)  # by architecture (each has its own lr)


def plan_protocol(cfg: StudyConfig, protocol: str) -> ProtocolPlan:
    preset = load_preset(cfg.dataset, protocol, cfg.student, num_devices=cfg.workers_per_trial)
    data = DataConfig(dataset=cfg.dataset, root=cfg.data_root, protocol=protocol, split_dir=cfg.split_dir,
                      split_out_dir=os.path.abspath(os.path.join(cfg.output_dir, "splits")),
                      crop_size=cfg.crop_size or preset["crop_size"],
                      batch_size=cfg.batch_size or preset["batch_size"], num_workers=cfg.loader_workers,
                      seed=cfg.seed)
    iterations = cfg.iterations or preset["student_iterations"]
    eval_every = min(cfg.eval_every or preset["eval_every"], iterations)
    teacher_iterations = cfg.teacher_iterations or preset["teacher_iterations"]
    distill = DistillConfig(student=cfg.student, data=data, optim=preset_optim(preset, "student", iterations),
                            weights=preset["weights"], iterations=iterations, eval_every=eval_every,
                            ohem=preset["ohem"], seed=cfg.seed)
    # Teachers have their own official total batch (Cityscapes: 8 against the students' 16).
    teacher_data = dataclasses.replace(data, batch_size=cfg.batch_size or preset["teacher_batch_size"])
    teacher_eval_every = min(cfg.eval_every or preset["teacher_eval_every"], teacher_iterations)
    teachers = {arch: TeacherConfig(arch=arch, data=teacher_data,
                                    optim=preset_optim(preset, "teacher", teacher_iterations, arch),
                                    cps_weight=preset["cps_weight"], iterations=teacher_iterations,
                                    eval_every=teacher_eval_every, ohem=preset["ohem"], seed=cfg.seed)
                for arch in (TEACHER_DEEP, TEACHER_WIDE)}
    run = {"distill": distill.to_dict(), "storage_path": os.path.join(cfg.resolved_storage(), study_name(cfg)),
           "max_failures": cfg.max_failures,
           "scaling": {"workers": cfg.workers_per_trial, "cpus_per_worker": cfg.cpus_per_worker,
                       "gpus_per_worker": cfg.gpus_per_trial // cfg.workers_per_trial}}
    return ProtocolPlan(protocol, run, paper_search_point(preset["weights"]), iterations, teachers)


def study_name(cfg: StudyConfig) -> str:
    return os.path.basename(os.path.abspath(cfg.output_dir))


def max_concurrent_trials(cfg: StudyConfig) -> int:
    """Trials in flight: the limiting resource of the cluster over what one trial takes."""
    if cfg.max_concurrent_trials:
        return cfg.max_concurrent_trials
    resources = ray.cluster_resources()
    if cfg.gpus_per_trial:
        gpus = int(resources.get("GPU", 0))
        # An autoscaled cluster starts with no GPU worker: one trial in flight makes it scale up.
        return max(1, gpus // cfg.gpus_per_trial)
    return max(1, int(resources.get("CPU", 1)) // (cfg.workers_per_trial * cfg.cpus_per_worker))


def open_study_folder(cfg: StudyConfig, iterations: dict[str, int] | None = None) -> dict[str, Any]:
    """Write study.json for a new study, or check it against the config on --resume. A folder that
    already holds a study is never reused silently."""
    path = os.path.join(cfg.output_dir, "study.json")
    identity = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items() if k in _IDENTITY}
    if os.path.exists(path):
        if not cfg.resume:
            raise FileExistsError(f"{cfg.output_dir} already holds a study (study.json): pass --resume to "
                                  f"continue it, or choose another --output-dir")
        with open(path) as f:
            study = json.load(f)
        changed = {k: (study["identity"].get(k), v) for k, v in identity.items() if study["identity"].get(k) != v}
        if changed:
            raise ValueError(f"--resume: {path} was started with different options "
                             f"(option: (study, now)): {changed}")
        return study
    if cfg.resume:
        raise FileNotFoundError(f"--resume: {path} does not exist; nothing to resume")
    study = {"dataset": cfg.dataset, "protocols": list(cfg.protocols), "student": cfg.student,
             "teacher_deep": TEACHER_DEEP, "teacher_wide": TEACHER_WIDE, "num_classes": NUM_CLASSES[cfg.dataset],
             "iterations": iterations or cfg.iterations, "created": now_iso(), "device": cfg.device,
             "devices_per_trial": cfg.devices_per_trial, "identity": identity}
    write_json_atomic(path, study)
    return study


def tune_run(cfg: StudyConfig, name: str, param_space: dict, tune_config: tune.TuneConfig,
             recorder: TrialRecorder) -> tune.ResultGrid:
    """Fit one Tune run, or restore and finish it when --resume finds it in storage."""
    storage_path = os.path.join(cfg.resolved_storage(), study_name(cfg))
    trainable = tune.with_resources(run_trial, TRIAL_DRIVER_RESOURCES)
    # Tune saves its experiment state every >= 10 s by default: a driver killed in that window
    # would run trials that had already finished again on restore. A study has tens of trials, so
    # saving at every step of Tune's loop costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    path = storage.join(storage_path, name)
    if cfg.resume and tune.Tuner.can_restore(path):
        print(f"resuming Tune run {path}", flush=True)
        tuner = tune.Tuner.restore(path, trainable=trainable, param_space=param_space,
                                   resume_unfinished=True, resume_errored=False, restart_errored=False)
    else:
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=tune.RunConfig(name=name, storage_path=storage_path, callbacks=[recorder],
                                                     failure_config=tune.FailureConfig(fail_fast=False)))
    return tuner.fit()


def run_search(cfg: StudyConfig, plan: ProtocolPlan, concurrency: int,
               extra_points: list[dict[str, float]] = ()) -> None:
    slug = protocol_slug(plan.protocol)
    searcher = OptunaSearch(
        space=search_space, metric="miou", mode="max", points_to_evaluate=[plan.paper_point, *extra_points],
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, multivariate=True),
        storage=optuna.storages.RDBStorage(cfg.resolved_optuna_storage()), study_name=f"mgd-{slug}")
    eval_every = plan.run["distill"]["eval_every"]
    scheduler = ASHAScheduler(time_attr="iteration", metric="miou", mode="max", max_t=plan.iterations,
                              grace_period=min(plan.iterations, 2 * eval_every), reduction_factor=2)
    tune_config = tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_samples,
                                  max_concurrent_trials=concurrency)
    recorder = TrialRecorder(cfg.output_dir, plan.protocol, "search", plan.iterations, cfg.device,
                             cfg.devices_per_trial, cfg.verbose)
    tune_run(cfg, f"search-{slug}", {"run": plan.run}, tune_config, recorder)


def best_search_point(cfg: StudyConfig, protocol: str) -> dict[str, float] | None:
    """The completed search trial with the highest final mIoU (early-stopped ones ran less)."""
    folder = os.path.join(cfg.output_dir, "trials", protocol_slug(protocol))
    best = None
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
        with open(os.path.join(folder, name)) as f:
            record = json.load(f)
        if record["kind"] == "search" and record["status"] == "completed" and record["miou"] is not None:
            if best is None or record["miou"] > best["miou"]:
                best = record
    return None if best is None else best["config"]


def run_ablation(cfg: StudyConfig, plan: ProtocolPlan, concurrency: int) -> None:
    slug = protocol_slug(plan.protocol)
    paper = LossWeights(sup=1.0, pixel=plan.paper_point["w_pixel"], semantic=plan.paper_point["lambda_semantic"],
                        region=plan.paper_point["lambda_region"])
    best = best_search_point(cfg, plan.protocol)
    variants = [v for v in cfg.ablation_variants if v != "mgd_best" or best is not None]
    if best is None:
        print(f"[{plan.protocol}] no completed search trial: the ablation has no 'MGD (best found)' row", flush=True)
    points = [{"variant": v, "seed": cfg.seed + s, **ablation_point(v, paper, best)}
              for v in variants for s in range(cfg.seeds)]
    recorder = TrialRecorder(cfg.output_dir, plan.protocol, "ablation", plan.iterations, cfg.device,
                             cfg.devices_per_trial, cfg.verbose)
    tune_config = tune.TuneConfig(max_concurrent_trials=concurrency)
    tune_run(cfg, f"ablation-{slug}", {"run": plan.run, "ablation": tune.grid_search(points)}, tune_config, recorder)


def prepare_teachers(cfg: StudyConfig, plans: list[ProtocolPlan], concurrency: int) -> None:
    """Train (or find cached) both teachers of every protocol, `concurrency` runs at a time, and
    put their storage URIs into each protocol's run."""
    teachers_root = storage.join(cfg.resolved_storage(), "teachers")
    jobs = []
    for plan in plans:
        for arch, key, given in ((TEACHER_DEEP, "teacher_deep_checkpoint", cfg.teacher_deep_checkpoint),
                                 (TEACHER_WIDE, "teacher_wide_checkpoint", cfg.teacher_wide_checkpoint)):
            if given:
                plan.run["distill"][key] = given if "://" in given else os.path.abspath(given)
            else:
                jobs.append((plan, key, plan.teachers[arch]))
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        uris = list(pool.map(lambda job: ensure_teacher(job[2], job[0].run, teachers_root), jobs))
    for (plan, key, _), uri in zip(jobs, uris):
        plan.run["distill"][key] = uri


def prepare_study(cfg: StudyConfig) -> list[ProtocolPlan]:
    """Everything that can be checked before Ray starts: the presets, the data (the synthetic set is
    generated here on first use), the results folder (new, or a matching study on --resume)."""
    plans = [plan_protocol(cfg, p) for p in cfg.protocols]
    for plan in plans:
        build_datasets(DataConfig(**plan.run["distill"]["data"]))
    os.makedirs(cfg.output_dir, exist_ok=True)
    open_study_folder(cfg, {plan.protocol: plan.iterations for plan in plans})
    return plans


def run_study(cfg: StudyConfig, plans: list[ProtocolPlan] | None = None,
              extra_points: list[dict[str, float]] = ()) -> dict[str, str]:
    """Run (or resume) the whole study; return the report's file paths. `extra_points` are
    configurations the searcher evaluates right after the paper's defaults."""
    plans = plans if plans is not None else prepare_study(cfg)
    for point in extra_points:  # a bad weight or threshold fails here, not inside a trial
        DistillConfig(weights=weights_from_point(point), confidence_threshold=point["confidence_threshold"])
    print(f"study {study_name(cfg)}: results in {os.path.abspath(cfg.output_dir)}, "
          f"Ray storage in {cfg.resolved_storage()}", flush=True)
    if not ray.is_initialized():
        ray.init(address=cfg.address)
    concurrency = max_concurrent_trials(cfg)
    print(f"{concurrency} trial(s) in flight, {cfg.devices_per_trial} {cfg.device.upper()}(s) each", flush=True)
    prepare_teachers(cfg, plans, concurrency)
    for plan in plans:
        run_search(cfg, plan, concurrency, list(extra_points))
        if cfg.ablation:
            run_ablation(cfg, plan, concurrency)
    paths = generate_report(cfg.output_dir)
    print(f"report: {paths['index']}", flush=True)
    return paths
