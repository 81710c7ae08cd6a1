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

from ..config import (DATASETS, STUDENTS, TEACHER_DEEP, TEACHER_WIDE, DataConfig, DistillConfig, LossWeights,
                      TeacherConfig, check_protocol, protocol_slug)
from ..data import NUM_CLASSES, build_datasets
from ..engine.presets import load_preset, preset_optim, study_budget
from ..models.pretrained import check_regime, default_regime
from ..report import generate_report
from . import storage
from .baseline import background_miou, separating_command
from .export import export_best, folder_size, protocol_records, prune_trial_weights
from .progress import ProgressCallback, StudyProgress, register
from .checks import check_protocols_unique, check_teachers
from .cluster import check_trial_fits, connect, node_shapes
from ..schema import ABLATION_VARIANTS, write_json_atomic
from .records import TrialRecorder, now_iso
from .search import HonestOptunaSearch
from .space import ablation_point, paper_search_point, search_space, weights_from_point
from .teachers import ensure_teacher, read_teacher_metrics, stage_pretrained, teacher_name
from .trial import run_trial

# The trial function only drives a TorchTrainer; its workers hold the CPUs and GPUs. Tune needs a
# non-empty request, so the driver asks for memory only, and a sliver of the head's own resource:
# trial drivers (and the Train controllers Ray places beside them) then live on the head, and losing
# a worker node costs a Train restart, never the trial.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2, "node:__internal_head__": 0.001}
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
    # >1: that many single-worker trials share each GPU (each asks Ray for 1/N GPU). Small models are
    # launch-bound: one trial keeps an H100 ~20-30% busy (docs/benchmarks.md, GPU section).
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
            return self.gpus_per_trial / self.trials_per_gpu if self.trials_per_gpu > 1 else self.gpus_per_trial
        return self.workers_per_trial * self.cpus_per_worker

    @property
    def gpus_per_worker(self) -> float:
        return self.gpus_per_trial // self.workers_per_trial / self.trials_per_gpu if self.trials_per_gpu > 1 \
            else self.gpus_per_trial // self.workers_per_trial

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
           "max_failures": cfg.max_failures, "log_level": "INFO" if cfg.verbose_ray else "WARNING",
           "worker_start_retries": cfg.worker_start_retries, "worker_start_timeout_s": cfg.worker_start_timeout_s,
           "scaling": {"workers": cfg.workers_per_trial, "cpus_per_worker": cfg.cpus_per_worker,
                       "gpus_per_worker": cfg.gpus_per_worker}}
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
        return max(1, gpus // cfg.gpus_per_trial) * cfg.trials_per_gpu
    return max(1, int(resources.get("CPU", 1)) // (cfg.workers_per_trial * cfg.cpus_per_worker))


def open_study_folder(cfg: StudyConfig, iterations: dict[str, int] | None = None,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
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
             "devices_per_trial": cfg.devices_per_trial, "pretrained": cfg.pretrained, "identity": identity,
             **(extra or {})}
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
                           run_config=tune.RunConfig(name=name, storage_path=storage_path,
                                                     callbacks=[recorder, ProgressCallback(study_name(cfg))],
                                                     failure_config=tune.FailureConfig(fail_fast=False)))
    return tuner.fit()


def run_search(cfg: StudyConfig, plan: ProtocolPlan, concurrency: int,
               extra_points: list[dict[str, float]] = ()) -> None:
    slug = protocol_slug(plan.protocol)
    # ASHA-stopped trials reach Optuna as PRUNED, failed ones as FAIL (search.py).
    searcher = HonestOptunaSearch(
        space=search_space, metric="miou", mode="max", points_to_evaluate=[plan.paper_point, *extra_points],
        max_iterations=plan.iterations,
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
    keep_best_drop_the_rest(cfg, plan, "search")


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
    if cfg.export_ablation_students:
        study = _study_json(cfg)
        for variant in variants:
            export_best(cfg.output_dir, plan.protocol, study, name=variant, variant=variant,
                        teachers=_teachers_json(cfg).get(plan.protocol))
    keep_best_drop_the_rest(cfg, plan, "ablation")


def _study_json(cfg: StudyConfig) -> dict[str, Any]:
    with open(os.path.join(cfg.output_dir, "study.json")) as f:
        return json.load(f)


def _teachers_json(cfg: StudyConfig) -> dict[str, Any]:
    path = os.path.join(cfg.output_dir, "teachers.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


class StudyInterrupted(RuntimeError):
    """A Tune run returned with trials still running (Ctrl+C, SIGINT/SIGTERM): the study stops
    there, so that --resume continues it, rather than going on to the next phase."""


def keep_best_drop_the_rest(cfg: StudyConfig, plan: ProtocolPlan, kind: str) -> None:
    """After a finished Tune run: export the protocol's best student so far, then (unless
    --keep-trial-weights) delete the Train folders of that run's finished trials. In this order a
    kill at any point leaves either the weights or an export at least as good (see export.py).
    Raises StudyInterrupted (after the export) when the run stopped with trials unfinished."""
    best = export_best(cfg.output_dir, plan.protocol, _study_json(cfg),
                       teachers=_teachers_json(cfg).get(plan.protocol))
    if best:
        print(f"[{plan.protocol}] best student so far: {best}", flush=True)
    if not cfg.keep_trial_weights:  # only finished trials: an unfinished one resumes from its folder
        prune_trial_weights(cfg.output_dir, plan.protocol, kind, plan.run["storage_path"])
    unfinished = [r["trial_id"] for r in protocol_records(cfg.output_dir, plan.protocol)
                  if r.get("kind") == kind and r.get("status") == "running"]
    if unfinished:
        raise StudyInterrupted(f"[{plan.protocol} {kind}] interrupted with trial(s) {unfinished} unfinished; "
                               f"continue with --resume --output-dir {cfg.output_dir}")


def prepare_teachers(cfg: StudyConfig, plans: list[ProtocolPlan], concurrency: int,
                     progress: StudyProgress | None = None) -> None:
    """Train (or find cached) both teachers of every protocol, `concurrency` runs at a time, put
    their storage URIs into each protocol's run, and write RESULTS_DIR/teachers.json (where each
    teacher is, its size and its val mIoU) for the report."""
    teachers_root = storage.join(cfg.resolved_storage(), "teachers")
    jobs, given_files = [], []
    for plan in plans:
        for arch, key, given in ((TEACHER_DEEP, "teacher_deep_checkpoint", cfg.teacher_deep_checkpoint),
                                 (TEACHER_WIDE, "teacher_wide_checkpoint", cfg.teacher_wide_checkpoint)):
            if given:
                plan.run["distill"][key] = given if "://" in given else os.path.abspath(given)
                given_files.append((plan, key, arch))
            else:
                jobs.append((plan, key, plan.teachers[arch]))

    def ensure(job):
        cached = storage.exists(storage.join(teachers_root, f"{teacher_name(job[2])}.pt"))
        uri = ensure_teacher(job[2], job[0].run, teachers_root)
        if progress is not None:  # a cached teacher is done but took no time: not in the estimate
            progress.already_done("teacher", 1) if cached else progress.finished("teacher")
        return uri

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        uris = list(pool.map(ensure, jobs))
    for (plan, key, _), uri in zip(jobs, uris):
        plan.run["distill"][key] = uri
    listing: dict[str, dict[str, Any]] = {}
    for plan, key, arch, trained in [(p, k, t.arch, True) for p, k, t in jobs] + [g + (False,) for g in given_files]:
        uri = plan.run["distill"][key]
        metrics = read_teacher_metrics(uri) if trained else {}  # a given file's scores are unknown
        role = "deep" if key == "teacher_deep_checkpoint" else "wide"
        listing.setdefault(plan.protocol, {})[role] = {
            "arch": arch, "path": uri, "size_bytes": _size_or_none(uri), "miou": metrics.get("miou"),
            "iterations": metrics.get("iterations")}
    write_json_atomic(os.path.join(cfg.output_dir, "teachers.json"), listing)


def _size_or_none(uri: str) -> int | None:
    try:
        return os.path.getsize(uri) if "://" not in uri else None
    except OSError:
        return None


def prepare_study(cfg: StudyConfig) -> list[ProtocolPlan]:
    """Everything that can be checked before Ray starts: the presets, the data (the synthetic set is
    generated here on first use), the ImageNet files of --pretrained imagenet (found or downloaded here,
    copied next to the cached teachers), the results folder (new, or a matching study on --resume)."""
    check_teachers(cfg)  # a corrupt teacher file would otherwise fail every trial in its worker
    plans = [plan_protocol(cfg, p) for p in cfg.protocols]
    data = [build_datasets(DataConfig(**plan.run["distill"]["data"])) for plan in plans]
    weights = stage_pretrained(cfg.pretrained, [cfg.student, TEACHER_DEEP, TEACHER_WIDE],
                               cfg.resolved_storage(), cfg.pretrained_dir)
    for plan in plans:
        plan.run["distill"]["backbone_weights"] = weights[cfg.student]
        plan.teachers = {arch: dataclasses.replace(teacher, backbone_weights=weights[arch])
                         for arch, teacher in plan.teachers.items()}
    os.makedirs(cfg.output_dir, exist_ok=True)
    extra = None
    if not os.path.exists(os.path.join(cfg.output_dir, "study.json")):
        # What REPORT.md opens with: the budget, the all-background score (a row at that level
        # learned nothing beyond the class prior), and the command whose results separate the rows.
        first = plans[0].run["distill"]
        extra = {"budget": {"student_iterations": {p.protocol: p.iterations for p in plans},
                            "teacher_iterations": {p.protocol: p.teachers[TEACHER_DEEP].iterations for p in plans},
                            "batch_size": first["data"]["batch_size"], "crop_size": first["data"]["crop_size"],
                            "eval_every": first["eval_every"], "search_trials": cfg.num_samples,
                            "ablation_seeds": cfg.seeds},
                 "background_miou": background_miou(data[0].val, data[0].num_classes),
                 "separating_command": separating_command(cfg)[0], "separating_note": separating_command(cfg)[1]}
    open_study_folder(cfg, {plan.protocol: plan.iterations for plan in plans}, extra)
    return plans


def planned_runs(cfg: StudyConfig) -> dict[str, int]:
    """Runs the whole study makes: teacher runs and student trials (search and ablation)."""
    teachers = sum(not given for given in (cfg.teacher_deep_checkpoint, cfg.teacher_wide_checkpoint))
    per_protocol = cfg.num_samples + (len(cfg.ablation_variants) * cfg.seeds if cfg.ablation else 0)
    return {"teacher": teachers * len(cfg.protocols), "trial": per_protocol * len(cfg.protocols)}


def finished_trials(cfg: StudyConfig) -> int:
    """Trials already finished in RESULTS_DIR (before a --resume)."""
    count = 0
    for protocol in cfg.protocols:
        folder = os.path.join(cfg.output_dir, "trials", protocol_slug(protocol))
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            try:
                with open(os.path.join(folder, name)) as f:
                    count += json.load(f).get("status") in ("completed", "early_stopped", "failed")
            except (OSError, ValueError):
                continue
    return count


def run_study(cfg: StudyConfig, plans: list[ProtocolPlan] | None = None,
              extra_points: list[dict[str, float]] = ()) -> dict[str, str]:
    """Run (or resume) the whole study; return the report's file paths. `extra_points` are
    configurations the searcher evaluates right after the paper's defaults."""
    plans = plans if plans is not None else prepare_study(cfg)
    for point in extra_points:  # a bad weight or threshold fails here, not inside a trial
        DistillConfig(weights=weights_from_point(point), confidence_threshold=point["confidence_threshold"])
    print(f"study {study_name(cfg)}: results in {os.path.abspath(cfg.output_dir)}, "
          f"Ray storage in {cfg.resolved_storage()}", flush=True)
    connect(cfg.address, cfg.worker_start_timeout_s)  # every process told which cluster (cluster.py)
    check_trial_fits(plans[0].run["scaling"], node_shapes())  # resources no node can ever offer
    concurrency = max_concurrent_trials(cfg)
    print(f"{concurrency} trial(s) in flight, {cfg.devices_per_trial} {cfg.device.upper()}(s) each", flush=True)
    progress = StudyProgress(list(cfg.protocols), planned_runs(cfg))  # extra points count in num_samples
    progress.already_done("trial", finished_trials(cfg))
    register(study_name(cfg), progress)
    progress.set_phase("teachers")
    prepare_teachers(cfg, plans, concurrency, progress)
    for plan in plans:
        progress.set_phase("search", plan.protocol)
        run_search(cfg, plan, concurrency, list(extra_points))
        if cfg.ablation:
            progress.set_phase("ablation", plan.protocol)
            run_ablation(cfg, plan, concurrency)
    progress.set_phase("report")
    paths = generate_report(cfg.output_dir)
    teachers_root = os.path.join(cfg.resolved_storage(), "teachers")
    if "://" not in teachers_root:
        print(f"results folder: {folder_size(cfg.output_dir, exclude=(teachers_root,)) / 1e6:.0f} MB without the "
              f"cached teachers ({folder_size(teachers_root) / 1e6:.0f} MB in {teachers_root})", flush=True)
    print(f"report: {paths['index']}", flush=True)
    return paths
