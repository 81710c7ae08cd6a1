"""The Tune phases of a protocol: the Optuna search (the paper's point first, ranked on the
held-out selection set) and the ablation rows (seeds the search never used, scored on val); after
each, the best student is exported and the finished trials' weights dropped."""

from __future__ import annotations

import dataclasses
import os
from functools import partial

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from ... import storage
from ...config import protocol_slug
from ...data import build_datasets
from ...schema import best_trial, is_completed, read_records
from ..export import export_best, prune_trial_weights
from ..options import study_name
from ..plan import ProtocolPlan, ablation_seeds, concurrency
from ..progress import ProgressCallback, say_waiting
from ..ray_private import HEAD_NODE_RESOURCE
from ..records import TrialRecorder, record_untold
from ..reservations import ReservationWatch, wait_released
from ..results import study_json, teachers_json
from ..search import HonestOptunaSearch
from ..spec import SearchPoint, TrialSpec, ablation_point, param_space, search_space
from ..study_config import StudyConfig
from ..tracking import trial_callbacks
from ..trial import run_trial

# The trial function only drives a TorchTrainer; its workers hold the CPUs and GPUs. Tune needs a
# non-empty request, so the driver asks for memory only, and a sliver of the head's own resource:
# trial drivers (and the Train controllers Ray places beside them) then live on the head, and
# losing a worker node costs a Train restart, never the trial.
TRIAL_DRIVER_RESOURCES = {"CPU": 0, "memory": 256 * 1024**2, HEAD_NODE_RESOURCE: 0.001}


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
    storage_path = os.path.join(cfg.storage.resolved_storage(), study_name(cfg))
    trainable = tune.with_resources(trainable, TRIAL_DRIVER_RESOURCES)
    # Tune saves its experiment state every >= 10 s by default: a driver killed in that window
    # would run trials that had already finished again on restore. A study has tens of trials, so
    # saving at every step of Tune's loop costs little.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    path = storage.join(storage_path, name)
    if cfg.storage.resume and tune.Tuner.can_restore(path):
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
        watch = ReservationWatch(
            partial(say_waiting, study_name(cfg)), cfg.cluster.worker_start_timeout_s
        )
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
        on_untold=partial(record_untold, cfg.storage.output_dir, spec.protocol),
        sampler=optuna.samplers.TPESampler(
            seed=cfg.seed,
            multivariate=True,
            n_startup_trials=tpe_startup_trials(cfg.budget.num_samples),
        ),
        storage=optuna.storages.RDBStorage(cfg.storage.resolved_optuna_storage()),
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
        num_samples=cfg.budget.num_samples,
        max_concurrent_trials=concurrency(cfg, spec.run),
    )
    recorder = TrialRecorder(
        cfg.storage.output_dir,
        spec.protocol,
        "search",
        iterations,
        cfg.cluster.device,
        cfg.cluster.devices_per_trial,
        cfg.verbose,
        search_order=searcher.search_order,
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


def best_search_point(cfg: StudyConfig, protocol: str) -> SearchPoint | None:
    """The point of the protocol's best search trial (early-stopped ones ran less: never it)."""
    best = best_trial(read_records(cfg.storage.output_dir, protocol), kind="search")
    return None if best is None else SearchPoint.from_tune(best.config)


def run_ablation(cfg: StudyConfig, spec: TrialSpec) -> None:
    slug = protocol_slug(spec.protocol)
    best = best_search_point(cfg, spec.protocol)
    variants = [v for v in cfg.budget.ablation_variants if v != "mgd_best" or best is not None]
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
        cfg.storage.output_dir,
        spec.protocol,
        "ablation",
        spec.distill.iterations,
        cfg.cluster.device,
        cfg.cluster.devices_per_trial,
        cfg.verbose,
    )
    tune_config = tune.TuneConfig(max_concurrent_trials=concurrency(cfg, spec.run))
    tune_run(cfg, f"ablation-{slug}", param_space(spec, rows), tune_config, recorder)
    if cfg.storage.export_ablation_students:
        study = study_json(cfg)
        for variant in variants:
            export_best(
                cfg.storage.output_dir,
                spec.protocol,
                study,
                name=variant,
                variant=variant,
                teachers=teachers_json(cfg).get(spec.protocol),
            )
    keep_best_drop_the_rest(cfg, spec, "ablation")


class StudyInterrupted(RuntimeError):
    """A Tune run returned with trials still running (Ctrl+C, SIGINT/SIGTERM): the study stops
    there, so that --resume continues it, rather than going on to the next phase."""


def keep_best_drop_the_rest(cfg: StudyConfig, spec: TrialSpec, kind: str) -> None:
    """After a finished Tune run: export the protocol's best student so far, then (unless
    --keep-trial-weights) delete the Train folders of that run's finished trials. In this order a
    kill at any point leaves either the weights or an export at least as good (see export.py).
    Raises StudyInterrupted (after the export) when the run stopped with trials unfinished."""
    records = read_records(cfg.storage.output_dir, spec.protocol)
    best = export_best(
        cfg.storage.output_dir,
        spec.protocol,
        study_json(cfg),
        teachers=teachers_json(cfg).get(spec.protocol),
        records=records,
    )
    if best:
        print(f"[{spec.protocol}] best student so far: {best}", flush=True)
    # never delete the only copies of the weights
    if not best and any(is_completed(r) for r in records):
        print(
            f"[{spec.protocol}] WARNING: no trial's weights could be exported; keeping every "
            f"trial's Train folder under {spec.run.storage_path}",
            flush=True,
        )
    elif not cfg.storage.keep_trial_weights:
        # only finished trials: an unfinished one resumes from its folder
        prune_trial_weights(cfg.storage.output_dir, spec.protocol, kind, spec.run.storage_path)
    unfinished = [r.trial_id for r in records if r.kind == kind and r.status == "running"]
    if unfinished:
        raise StudyInterrupted(
            f"[{spec.protocol} {kind}] interrupted with trial(s) {unfinished} unfinished; "
            f"continue with --resume --output-dir {cfg.storage.output_dir}"
        )
