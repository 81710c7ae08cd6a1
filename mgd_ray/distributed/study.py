"""The study: per partition protocol, teachers, then one Tune + Optuna search, then the ablation
runs the report needs; finally the report. Every step resumes where an interrupted study stopped.

This module coordinates; the options are checked in options.py, the runs planned in plan.py, and a
trial is a TrialSpec (spec.py) at a SearchPoint (space.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from .. import storage
from ..config import TEACHER_DEEP, TEACHER_WIDE, protocol_slug
from ..data import NUM_CLASSES, background_miou, build_datasets
from ..report import generate_report
from ..schema import (
    FINISHED,
    best_trial,
    is_completed,
    read_json_object,
    read_records,
    write_json_atomic,
)
from .cluster import ReservationWatch, check_trial_fits, connect, node_shapes, wait_released
from .export import export_best, folder_size, prune_trial_weights
from .options import (
    StudyConfig,
    check_study_folder,
    separating_command,
    study_identity,
    study_name,
)
from .plan import ProtocolPlan, concurrency, plan_study, planned_runs
from .progress import ProgressCallback, StudyProgress, register, say_waiting
from .ray_private import trainer_without_ray_cleaner
from .records import TrialRecorder, error_summary, now_iso, record_untold
from .search import HonestOptunaSearch
from .spec import SearchPoint, TrialSpec, ablation_point, param_space, search_space
from .teachers import ensure_teacher, read_teacher_metrics, stage_pretrained
from .tracking import check_tracking, open_tracking, trial_callbacks
from .tracking import register as register_tracking
from .trial import DISTILL_KEY, run_trial, scaling_config, targets_loop, train_run_config

# The trial function only drives a TorchTrainer; its workers hold the CPUs and GPUs. Tune needs a
# non-empty request, so the driver asks for memory only, and a sliver of the head's own resource:
# trial drivers (and the Train controllers Ray places beside them) then live on the head, and
# losing a worker node costs a Train restart, never the trial.
TARGETS_JSON = "targets.json"  # RESULTS_DIR/targets.json: each protocol's store, its cost and size
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2, "node:__internal_head__": 0.001}


def open_study_folder(
    cfg: StudyConfig, iterations: dict[str, int] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write study.json for a new study, or check it against the config on --resume
    (options.check_study_folder). A folder that already holds a study is never reused silently."""
    study = check_study_folder(cfg)
    if study is not None:
        return study
    study = {
        "dataset": cfg.dataset,
        "protocols": list(cfg.protocols),
        "student": cfg.student,
        "teacher_deep": TEACHER_DEEP,
        "teacher_wide": TEACHER_WIDE,
        "num_classes": NUM_CLASSES[cfg.dataset],
        "iterations": iterations or cfg.iterations,
        "created": now_iso(),
        "device": cfg.device,
        "devices_per_trial": cfg.devices_per_trial,
        "pretrained": cfg.pretrained,
        "identity": study_identity(cfg),
        **(extra or {}),
    }
    write_json_atomic(os.path.join(cfg.output_dir, "study.json"), study)
    return study


def tune_run(
    cfg: StudyConfig,
    name: str,
    param_space: dict,
    tune_config: tune.TuneConfig,
    recorder: TrialRecorder,
    trainable=run_trial,
) -> tune.ResultGrid:
    """Fit one Tune run of `trainable` (the MGD student trial), or restore and finish it when
    --resume finds it in storage. Returns once every trial's reservations are given back."""
    storage_path = os.path.join(cfg.resolved_storage(), study_name(cfg))
    trainable = tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES)
    # Tune saves its experiment state every >= 10 s by default: a driver killed in that window
    # would run trials that had already finished again on restore. A study has tens of trials, so
    # saving at every step of Tune's loop costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    path = storage.join(storage_path, name)
    if cfg.resume and tune.Tuner.can_restore(path):
        print(f"resuming Tune run {path}", flush=True)
        tuner = tune.Tuner.restore(
            path,
            trainable=trainable,
            param_space=param_space,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        watch = ReservationWatch(partial(say_waiting, study_name(cfg)), cfg.worker_start_timeout_s)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune_config,
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage_path,
                callbacks=[recorder, ProgressCallback(study_name(cfg)), watch]
                + trial_callbacks(cfg, recorder.protocol, recorder.kind, recorder.max_iterations),
                failure_config=tune.FailureConfig(fail_fast=False),
                verbose=None if cfg.verbose_ray else 0,  # Tune's tables: only with --verbose-ray
            ),
        )
    try:
        return tuner.fit()
    finally:
        # however the run ended, its trials' reservations are given back before the next phase
        wait_released(ray.get_runtime_context().get_job_id())
        say_waiting(study_name(cfg), "")


def run_search(cfg: StudyConfig, spec: TrialSpec, extra_points: list[SearchPoint] = ()) -> None:
    """The protocol's Tune + Optuna search: the paper's point first, then `extra_points`, then
    TPE's."""
    slug, iterations = protocol_slug(spec.protocol), spec.distill.iterations
    # Trials are ranked on the held-out selection set of the training split, so that the ablation
    # rows (other seeds, scored on val) report the picked point on images that did not pick it.
    spec = dataclasses.replace(
        spec, distill=dataclasses.replace(spec.distill, evaluate_on=selection_set(spec.protocol))
    )
    # ASHA-stopped trials reach Optuna as PRUNED, failed ones as FAIL (search.py).
    searcher = HonestOptunaSearch(
        space=search_space,
        metric="miou",
        mode="max",
        points_to_evaluate=[point.searched() for point in (spec.paper_point, *extra_points)],
        max_iterations=iterations,
        on_untold=partial(record_untold, cfg.output_dir, spec.protocol),
        sampler=optuna.samplers.TPESampler(
            seed=cfg.seed, multivariate=True, n_startup_trials=tpe_startup_trials(cfg.num_samples)
        ),
        storage=optuna.storages.RDBStorage(cfg.resolved_optuna_storage()),
        study_name=f"mgd-{slug}",
    )
    # stop_last_trials=False: a trial that reaches max_t ends as its Train run returns, having
    # given back its workers itself, rather than being stopped at its last report (cluster.py).
    scheduler = ASHAScheduler(
        time_attr="iteration",
        metric="miou",
        mode="max",
        max_t=iterations,
        grace_period=min(iterations, 2 * spec.distill.eval_every),
        reduction_factor=2,
        stop_last_trials=False,
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=cfg.num_samples,
        max_concurrent_trials=concurrency(cfg, spec.run),
    )
    recorder = TrialRecorder(
        cfg.output_dir,
        spec.protocol,
        "search",
        iterations,
        cfg.device,
        cfg.devices_per_trial,
        cfg.verbose,
    )
    tune_run(cfg, f"search-{slug}", param_space(spec), tune_config, recorder)
    keep_best_drop_the_rest(cfg, spec, "search")


def selection_set(protocol: str) -> str:
    """What a search trial is scored on: the held-out selection set, except for protocol "full",
    which has no unlabeled part to hold out (its search is then scored on val)."""
    return "val" if protocol == "full" else "holdout"


def selection_size(plan: ProtocolPlan) -> int:
    """Images a protocol's search is ranked on (the held-out selection set, or val)."""
    data = build_datasets(plan.distill.data, save_split=False)
    return len(data.holdout if selection_set(plan.protocol) == "holdout" else data.val)


def tpe_startup_trials(num_samples: int) -> int:
    """Random trials before TPE models the results: a third of the search (Optuna's default of
    10 would leave a search of up to 10 trials random throughout), at least 2 and at most 10."""
    return max(2, min(10, num_samples // 3))


def ablation_seeds(cfg: StudyConfig) -> list[int]:
    """The seeds of every ablation row: cfg.seed + 1 onwards, never the search's cfg.seed, so the
    "MGD (best found)" row is not the winning trial's own run again."""
    return [cfg.seed + 1 + s for s in range(cfg.seeds)]


def best_search_point(cfg: StudyConfig, protocol: str) -> SearchPoint | None:
    """The point of the protocol's best search trial (early-stopped ones ran less: never it)."""
    best = best_trial(read_records(cfg.output_dir, protocol), kind="search")
    return None if best is None else SearchPoint.from_tune(best.config)


def run_ablation(cfg: StudyConfig, spec: TrialSpec) -> None:
    slug = protocol_slug(spec.protocol)
    best = best_search_point(cfg, spec.protocol)
    variants = [v for v in cfg.ablation_variants if v != "mgd_best" or best is not None]
    if best is None:
        print(
            f"[{spec.protocol}] no completed search trial: the ablation has no 'MGD (best "
            "found)' row",
            flush=True,
        )
    rows = [
        (v, seed, ablation_point(v, spec.paper_point, best))
        for v in variants
        for seed in ablation_seeds(cfg)
    ]
    recorder = TrialRecorder(
        cfg.output_dir,
        spec.protocol,
        "ablation",
        spec.distill.iterations,
        cfg.device,
        cfg.devices_per_trial,
        cfg.verbose,
    )
    tune_config = tune.TuneConfig(max_concurrent_trials=concurrency(cfg, spec.run))
    tune_run(cfg, f"ablation-{slug}", param_space(spec, rows), tune_config, recorder)
    if cfg.export_ablation_students:
        study = _study_json(cfg)
        for variant in variants:
            export_best(
                cfg.output_dir,
                spec.protocol,
                study,
                name=variant,
                variant=variant,
                teachers=_teachers_json(cfg).get(spec.protocol),
            )
    keep_best_drop_the_rest(cfg, spec, "ablation")


def _study_json(cfg: StudyConfig) -> dict[str, Any]:
    return read_json_object(os.path.join(cfg.output_dir, "study.json"))


def _teachers_json(cfg: StudyConfig) -> dict[str, Any]:
    return _json_or_empty(os.path.join(cfg.output_dir, "teachers.json"))


class StudyInterrupted(RuntimeError):
    """A Tune run returned with trials still running (Ctrl+C, SIGINT/SIGTERM): the study stops
    there, so that --resume continues it, rather than going on to the next phase."""


def keep_best_drop_the_rest(cfg: StudyConfig, spec: TrialSpec, kind: str) -> None:
    """After a finished Tune run: export the protocol's best student so far, then (unless
    --keep-trial-weights) delete the Train folders of that run's finished trials. In this order a
    kill at any point leaves either the weights or an export at least as good (see export.py).
    Raises StudyInterrupted (after the export) when the run stopped with trials unfinished."""
    records = read_records(cfg.output_dir, spec.protocol)
    best = export_best(
        cfg.output_dir,
        spec.protocol,
        _study_json(cfg),
        teachers=_teachers_json(cfg).get(spec.protocol),
        records=records,
    )
    if best:
        print(f"[{spec.protocol}] best student so far: {best}", flush=True)
    if not best and any(
        is_completed(r) for r in records
    ):  # never delete the only copies of the weights
        print(
            f"[{spec.protocol}] WARNING: no trial's weights could be exported; keeping every "
            f"trial's Train folder under {spec.run.storage_path}",
            flush=True,
        )
    elif (
        not cfg.keep_trial_weights
    ):  # only finished trials: an unfinished one resumes from its folder
        prune_trial_weights(cfg.output_dir, spec.protocol, kind, spec.run.storage_path)
    unfinished = [r.trial_id for r in records if r.kind == kind and r.status == "running"]
    if unfinished:
        raise StudyInterrupted(
            f"[{spec.protocol} {kind}] interrupted with trial(s) {unfinished} unfinished; "
            f"continue with --resume --output-dir {cfg.output_dir}"
        )


def target_streams(cfg: StudyConfig) -> list[int]:
    """The mask streams (student seeds) a protocol's trials draw: the search's (cfg.seed) and each
    ablation seed's."""
    return sorted({cfg.seed, *(ablation_seeds(cfg) if cfg.ablation else ())})


def targets_store(cfg: StudyConfig, spec: TrialSpec) -> str:
    """Where a protocol's store of teacher targets lives: on the study's storage, named by
    everything its targets depend on (the teacher files' contents, the data stream, the trials'
    worker count, device and precision, the schedule and the streams), so that another study, a
    resumed one or a changed option never picks up targets of something else (the engine checks
    the store's manifest again in every trial)."""
    distill = spec.distill
    data = {
        k: v
        for k, v in dataclasses.asdict(distill.data).items()
        if k not in ("num_workers", "split_out_dir")
    }
    identity = {
        "teachers": [
            storage.sha256(distill.teacher_deep_checkpoint),
            storage.sha256(distill.teacher_wide_checkpoint),
        ],
        "teacher_train_mode": distill.teacher_train_mode,
        "data": data,
        "workers": spec.run.workers,
        "device": cfg.device,
        "amp": distill.amp,
        "iterations": distill.iterations,
        "streams": target_streams(cfg),
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    return storage.join(
        cfg.resolved_storage(), "targets", f"{protocol_slug(spec.protocol)}-{digest}"
    )


def prepare_targets(cfg: StudyConfig, spec: TrialSpec) -> TrialSpec:
    """Compute (or finish computing) the protocol's store of teacher targets and return the spec
    whose trials read it and load no teacher (--teacher-targets live: the spec unchanged).

    The store is written by Ray Train runs with the trials' worker count, each a chunk of the
    iterations, as many side by side as the cluster holds trials, so every slot works and no trial
    waits: the trials start once the store is whole. A chunk whose files exist is skipped, so a
    study killed while writing goes on where it stopped. What it cost (wall and device seconds)
    and its size go to RESULTS_DIR/targets.json."""
    if cfg.teacher_targets == "live":
        return spec
    store = targets_store(cfg, spec)
    streams, iterations = target_streams(cfg), spec.distill.iterations
    distill = dataclasses.replace(spec.distill, targets=store)
    chunks = max(1, min(concurrency(cfg, spec.run), iterations))
    bounds = [round(i * iterations / chunks) for i in range(chunks + 1)]
    name = store.rstrip("/").rsplit("/", 1)[-1]

    def write(chunk: int) -> float:
        run_name = f"targets-{name}-{chunk}"
        trainer = trainer_without_ray_cleaner(
            targets_loop,
            scaling_config=scaling_config(spec.run),
            train_loop_config={
                DISTILL_KEY: distill,
                "streams": streams,
                "first": bounds[chunk],
                "last": bounds[chunk + 1],
            },
            run_config=train_run_config(spec.run, run_name),
        )
        started = time.time()
        trainer.fit()
        storage.remove_tree(
            storage.join(spec.run.storage_path, run_name)
        )  # nothing in it resumes anything
        return time.time() - started

    print(
        f"[{spec.protocol}] teacher targets: {iterations} iterations x {len(streams)} mask "
        f"stream(s) into {store}, {chunks} writer(s) side by side",
        flush=True,
    )
    started = time.time()
    try:
        with ThreadPoolExecutor(max_workers=chunks) as pool:
            seconds = list(pool.map(write, range(chunks)))
    except Exception as error:  # noqa: BLE001 -- a writer that cannot start or fails
        # The trials can still run their teachers themselves: each then succeeds or fails on its
        # own, recorded, and the study goes on, as without shared targets. The half-written store
        # is deleted (on VOC it is 100-230 GB), and targets.json and REPORT.md say what happened.
        why = error_summary(str(error))
        storage.remove_tree(store)
        _write_targets_entry(
            cfg, spec.protocol, {"store": store, "fallback": why, "deleted": True}
        )
        print(
            f"[{spec.protocol}] WARNING: teacher targets could not be computed ({why}); the "
            f"partial store was deleted and this protocol's trials run their teachers themselves",
            flush=True,
        )
        return spec
    listing = _json_or_empty(os.path.join(cfg.output_dir, TARGETS_JSON))
    spent = listing.get(spec.protocol, {})
    listing[spec.protocol] = {
        "store": store,
        "iterations": iterations,
        "streams": streams,
        "writers": chunks,
        "wall_s": spent.get("wall_s", 0.0) + time.time() - started,
        "device_seconds": spent.get("device_seconds", 0.0) + sum(seconds) * cfg.devices_per_trial,
        "bytes": storage.tree_bytes(store),
        "deleted": False,
    }
    write_json_atomic(os.path.join(cfg.output_dir, TARGETS_JSON), listing)
    print(
        f"[{spec.protocol}] teacher targets ready: {listing[spec.protocol]['bytes'] / 1e6:.1f} "
        f"MB, {listing[spec.protocol]['wall_s']:.0f} s",
        flush=True,
    )
    return dataclasses.replace(spec, distill=distill)


def _write_targets_entry(cfg: StudyConfig, protocol: str, entry: dict[str, Any]) -> None:
    path = os.path.join(cfg.output_dir, TARGETS_JSON)
    listing = _json_or_empty(path)
    listing[protocol] = entry
    write_json_atomic(path, listing)


def release_targets(cfg: StudyConfig, spec: TrialSpec) -> None:
    """Delete a protocol's store once its last phase has ended (unless --keep-targets)."""
    if spec.distill.targets is None or cfg.keep_targets:
        return
    storage.remove_tree(spec.distill.targets)
    path = os.path.join(cfg.output_dir, TARGETS_JSON)
    listing = _json_or_empty(path)
    if spec.protocol in listing:
        listing[spec.protocol]["deleted"] = True
        write_json_atomic(path, listing)


def _json_or_empty(path: str) -> dict[str, Any]:
    return read_json_object(path) if os.path.exists(path) else {}


def prepare_teachers(
    cfg: StudyConfig, plans: list[ProtocolPlan], progress: StudyProgress | None = None
) -> list[TrialSpec]:
    """Train (or find cached) both teachers of every protocol, as many runs at a time as the
    cluster holds, write
    RESULTS_DIR/teachers.json (where each teacher is, its size and its val mIoU) for the report,
    and return each protocol's TrialSpec (with its teachers' storage URIs)."""
    teachers_root = storage.join(cfg.resolved_storage(), "teachers")
    given = {TEACHER_DEEP: cfg.teacher_deep_checkpoint, TEACHER_WIDE: cfg.teacher_wide_checkpoint}
    jobs = [
        (plan, arch) for plan in plans for arch in (TEACHER_DEEP, TEACHER_WIDE) if not given[arch]
    ]

    def ensure(job) -> str:
        plan, arch = job
        uri, cached = ensure_teacher(plan.teachers[arch], plan.run, teachers_root)
        if progress is not None:  # a cached teacher is done but took no time: not in the estimate
            progress.already_done("teacher", 1) if cached else progress.finished("teacher")
        return uri

    with ThreadPoolExecutor(max_workers=concurrency(cfg, plans[0].run)) as pool:
        trained = {
            (plan.protocol, arch): uri for (plan, arch), uri in zip(jobs, pool.map(ensure, jobs))
        }
    listing: dict[str, dict[str, Any]] = {}
    specs = []
    for plan in plans:
        uris = {}
        for role, arch in (("deep", TEACHER_DEEP), ("wide", TEACHER_WIDE)):
            path = given[arch]
            uri = (
                trained[(plan.protocol, arch)]
                if not path
                else path
                if "://" in path
                else os.path.abspath(path)
            )
            metrics = (
                read_teacher_metrics(uri) if not path else {}
            )  # a given file's scores are unknown
            listing.setdefault(plan.protocol, {})[role] = {
                "arch": arch,
                "path": uri,
                "size_bytes": _size_or_none(uri),
                "miou": metrics.get("miou"),
                "iterations": metrics.get("iterations"),
            }
            uris[arch] = uri
        specs.append(plan.trial_spec(uris[TEACHER_DEEP], uris[TEACHER_WIDE]))
    write_json_atomic(os.path.join(cfg.output_dir, "teachers.json"), listing)
    return specs


def _size_or_none(uri: str) -> int | None:
    try:
        return os.path.getsize(uri) if "://" not in uri else None
    except OSError:
        return None


def prepare_study(cfg: StudyConfig, plans: list[ProtocolPlan] | None = None) -> list[ProtocolPlan]:
    """Write what the study starts from, once every check has passed (plan_study, and the cluster's
    in run_study): the generated split lists, the ImageNet files copied next to the cached
    teachers, and study.json (a matching one on --resume is kept)."""
    plans = plans if plans is not None else plan_study(cfg)
    data = [
        build_datasets(plan.distill.data) for plan in plans
    ]  # checked already: now the split is kept
    stage_pretrained(
        cfg.pretrained,
        [cfg.student, TEACHER_DEEP, TEACHER_WIDE],
        cfg.resolved_storage(),
        cfg.pretrained_dir,
    )
    os.makedirs(cfg.output_dir, exist_ok=True)
    extra = None
    if not os.path.exists(os.path.join(cfg.output_dir, "study.json")):
        # What REPORT.md opens with: the budget, the all-background score (a row at that level
        # learned nothing beyond the class prior), and the command whose results separate the rows.
        first = plans[0].distill
        extra = {
            "budget": {
                "student_iterations": {p.protocol: p.iterations for p in plans},
                "teacher_iterations": {
                    p.protocol: p.teachers[TEACHER_DEEP].iterations for p in plans
                },
                "batch_size": first.data.batch_size,
                "crop_size": first.data.crop_size,
                "eval_every": first.eval_every,
                "search_trials": cfg.num_samples,
                "ablation_seeds": cfg.seeds,
                "name": cfg.budget,
                "tpe_startup_trials": tpe_startup_trials(cfg.num_samples),
                "selection_images": {p.protocol: selection_size(p) for p in plans},
            },
            "background_miou": background_miou(data[0].val, data[0].num_classes),
            "separating_command": separating_command(cfg)[0],
            "separating_note": separating_command(cfg)[1],
        }
    open_study_folder(cfg, {plan.protocol: plan.iterations for plan in plans}, extra)
    return plans


def finished_trials(cfg: StudyConfig) -> int:
    """Trials already finished in RESULTS_DIR (before a --resume)."""
    return sum(
        r.status in FINISHED
        for protocol in cfg.protocols
        for r in read_records(cfg.output_dir, protocol)
    )


def run_study(
    cfg: StudyConfig,
    plans: list[ProtocolPlan] | None = None,
    extra_points: list[dict[str, float]] = (),
) -> dict[str, str]:
    """Run (or resume) the whole study; return the report's file paths. `extra_points` (flat, by
    POINT_KEYS) are configurations the searcher evaluates right after the paper's defaults.
    Nothing is written to OUTPUT_DIR before every check has passed, the cluster's resources
    included."""
    plans = plans if plans is not None else plan_study(cfg)
    points = [
        SearchPoint.from_tune(point) for point in extra_points
    ]  # a bad weight or threshold fails here
    print(
        f"study {study_name(cfg)}: results in {os.path.abspath(cfg.output_dir)}, "
        f"Ray storage in {cfg.resolved_storage()}",
        flush=True,
    )
    check_tracking(cfg)  # an MLflow store that cannot be opened: refused before Ray starts
    connect(
        cfg.address, cfg.worker_start_timeout_s
    )  # every process told which cluster (cluster.py)
    check_trial_fits(plans[0].run.scaling(), node_shapes())  # resources no node can ever offer
    prepare_study(cfg, plans)
    tracking = open_tracking(cfg)  # the study's experiment and parent run (tracking.py)
    print(
        f"{concurrency(cfg, plans[0].run)} trial(s) in flight (asked again before each phase), "
        f"{cfg.devices_per_trial} {cfg.device.upper()}(s) each",
        flush=True,
    )
    progress = StudyProgress(
        list(cfg.protocols), planned_runs(cfg)
    )  # extra points count in num_samples
    progress.already_done("trial", finished_trials(cfg))
    register(study_name(cfg), progress)
    register_tracking(cfg, tracking)
    progress.set_phase("teachers")
    for spec in prepare_teachers(cfg, plans, progress):
        progress.set_phase("targets", spec.protocol)
        spec = prepare_targets(cfg, spec)
        progress.set_phase("search", spec.protocol)
        run_search(cfg, spec, points)
        if cfg.ablation:
            progress.set_phase("ablation", spec.protocol)
            run_ablation(cfg, spec)
        release_targets(cfg, spec)
    progress.set_phase("report")
    paths = generate_report(cfg.output_dir)
    if tracking is not None:
        tracking.finish(paths, cfg.output_dir)
    teachers_root = os.path.join(cfg.resolved_storage(), "teachers")
    if "://" not in teachers_root:
        print(
            f"results folder: {folder_size(cfg.output_dir, exclude=(teachers_root,)) / 1e6:.0f} "
            f"MB without the cached teachers ({folder_size(teachers_root) / 1e6:.0f} MB in "
            f"{teachers_root})",
            flush=True,
        )
    print(f"report: {paths['index']}", flush=True)
    return paths
