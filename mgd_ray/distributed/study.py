"""The study: per partition protocol, its teachers, its teacher targets, one Tune + Optuna
search, then the ablation runs the report needs; finally the report. Every phase resumes where an
interrupted study stopped.

This module sequences the phases (phases/: teachers, targets, tune); the options are checked in
options.py, the runs planned in plan.py, the results folder's files kept in results.py, and a
trial is a TrialSpec at a SearchPoint (spec.py).
"""

from __future__ import annotations

import os

from ..config import TEACHER_DEEP, TEACHER_WIDE
from ..data import background_miou, build_datasets
from ..report import generate_report
from .cluster import check_trial_fits, connect, node_shapes
from .export import folder_size
from .options import separating_command, study_name
from .phases.targets import prepare_targets, release_targets
from .phases.teachers import prepare_teachers
from .phases.tune import (
    StudyInterrupted,
    run_ablation,
    run_search,
    selection_size,
    tpe_startup_trials,
)
from .plan import ProtocolPlan, concurrency, plan_study, planned_runs
from .progress import StudyProgress, register
from .results import finished_trials, open_study_folder
from .spec import SearchPoint
from .study_config import StudyConfig
from .teachers import stage_pretrained
from .tracking import check_tracking, open_tracking
from .tracking import register as register_tracking

__all__ = ["StudyConfig", "StudyInterrupted", "open_study_folder", "prepare_study", "run_study"]


def prepare_study(cfg: StudyConfig, plans: list[ProtocolPlan] | None = None) -> list[ProtocolPlan]:
    """Write what the study starts from, once every check has passed (plan_study, and the cluster's
    in run_study): the generated split lists, the ImageNet files copied next to the cached
    teachers, and study.json (a matching one on --resume is kept)."""
    plans = plans if plans is not None else plan_study(cfg)
    data = [
        build_datasets(plan.distill.data) for plan in plans
    ]  # checked already: now the split is kept
    stage_pretrained(
        cfg.data.pretrained,
        [cfg.student, TEACHER_DEEP, TEACHER_WIDE],
        cfg.storage.resolved_storage(),
        cfg.data.pretrained_dir,
    )
    os.makedirs(cfg.storage.output_dir, exist_ok=True)
    extra = None
    if not os.path.exists(os.path.join(cfg.storage.output_dir, "study.json")):
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
                "search_trials": cfg.budget.num_samples,
                "ablation_seeds": cfg.budget.seeds,
                "name": cfg.budget.name,
                "tpe_startup_trials": tpe_startup_trials(cfg.budget.num_samples),
                "selection_images": {p.protocol: selection_size(p) for p in plans},
            },
            "background_miou": background_miou(data[0].val, data[0].num_classes),
            "separating_command": separating_command(cfg)[0],
            "separating_note": separating_command(cfg)[1],
        }
    open_study_folder(cfg, {plan.protocol: plan.iterations for plan in plans}, extra)
    return plans


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
        f"study {study_name(cfg)}: results in {os.path.abspath(cfg.storage.output_dir)}, "
        f"Ray storage in {cfg.storage.resolved_storage()}",
        flush=True,
    )
    check_tracking(cfg)  # an MLflow store that cannot be opened: refused before Ray starts
    # every process told which cluster (cluster.py)
    connect(cfg.cluster.address, cfg.cluster.worker_start_timeout_s)
    check_trial_fits(plans[0].run.scaling(), node_shapes())  # resources no node can ever offer
    prepare_study(cfg, plans)
    tracking = open_tracking(cfg)  # the study's experiment and parent run (tracking.py)
    print(
        f"{concurrency(cfg, plans[0].run)} trial(s) in flight (asked again before each phase), "
        f"{cfg.cluster.devices_per_trial} {cfg.cluster.device.upper()}(s) each",
        flush=True,
    )
    # extra points count in num_samples
    progress = StudyProgress(list(cfg.budget.protocols), planned_runs(cfg))
    progress.already_done("trial", finished_trials(cfg))
    register(study_name(cfg), progress)
    register_tracking(cfg, tracking)
    progress.set_phase("teachers")
    for spec in prepare_teachers(cfg, plans, progress):
        progress.set_phase("targets", spec.protocol)
        spec = prepare_targets(cfg, spec)
        progress.set_phase("search", spec.protocol)
        run_search(cfg, spec, points)
        if cfg.budget.ablation:
            progress.set_phase("ablation", spec.protocol)
            run_ablation(cfg, spec)
        release_targets(cfg, spec)
    progress.set_phase("report")
    paths = generate_report(cfg.storage.output_dir)
    if tracking is not None:
        tracking.finish(paths, cfg.storage.output_dir)
    teachers_root = os.path.join(cfg.storage.resolved_storage(), "teachers")
    if "://" not in teachers_root:
        results = folder_size(cfg.storage.output_dir, exclude=(teachers_root,))
        print(
            f"results folder: {results / 1e6:.0f} "
            f"MB without the cached teachers ({folder_size(teachers_root) / 1e6:.0f} MB in "
            f"{teachers_root})",
            flush=True,
        )
    print(f"report: {paths['index']}", flush=True)
    return paths
