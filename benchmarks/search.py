"""Search efficiency (issue 8, item 5): on the synthetic set, one protocol, the study's search
(Optuna TPE + ASHA early stopping, phases.tune.run_search) against random search
without early stopping (Optuna RandomSampler, FIFO), at the same trial budget, the same first point
(the paper's weights), the same teachers and seed. Figures: best mIoU found, device-hours spent in
all, and device-hours spent until the trial that found the best had finished.

The budget is deliberately tiny (a few trials of a few iterations at a reduced crop) so that it
runs in minutes on 2 cores: one seed, one protocol. It shows the machinery and the order of the
compute saving; it cannot rank the two searchers' quality.

    python benchmarks/search.py                         # 6 trials each, 8 iterations, crop 48,
                                                        # batch 2
    python benchmarks/search.py --quick                 # 4 trials each, 4 iterations
    python benchmarks/search.py --teacher-iterations 0  # random-weight teachers (no CPS
                                                        # training first)
"""

from __future__ import annotations

import argparse
import os
import tempfile

import optuna
import ray
from common import (
    CACHE,
    arg_parser,
    machine,
    random_teachers,
    synthetic_distill_config,
    table,
    teacher_config,
)
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from mgd_ray.config import TEACHER_DEEP, TEACHER_WIDE, protocol_slug
from mgd_ray.distributed.phases.teachers import prepare_teachers
from mgd_ray.distributed.phases.tune import run_search, tune_run
from mgd_ray.distributed.plan import plan_protocol
from mgd_ray.distributed.records import TrialRecorder
from mgd_ray.distributed.search import HonestOptunaSearch
from mgd_ray.distributed.spec import TrialSpec, param_space, search_space
from mgd_ray.distributed.study_config import StudyConfig
from mgd_ray.engine import LocalContext, train_teacher
from mgd_ray.schema import best_trial, read_records


def trained_teachers(crop: int, batch: int, iterations: int) -> dict[str, str]:
    """Teacher state-dict files: CPS-trained for `iterations` (cached by schedule), or random ones
    at 0."""
    cfg = synthetic_distill_config(data={"crop_size": crop, "batch_size": batch, "num_workers": 0})
    if iterations == 0:
        return random_teachers(cfg)
    paths = {}
    for key, arch in (
        ("teacher_deep_checkpoint", TEACHER_DEEP),
        ("teacher_wide_checkpoint", TEACHER_WIDE),
    ):
        # "preset": trained with the study's teacher recipe (its warm-up included; earlier caches
        # were not)
        folder = CACHE / f"cps-{arch}-crop{crop}-batch{batch}-it{iterations}-preset"
        model = folder / "checkpoint" / "model.pt"
        if not model.exists():
            print(f"training teacher {arch}: {iterations} CPS iterations", flush=True)
            train_teacher(
                teacher_config(cfg, arch, iterations), LocalContext(str(folder), verbose=False)
            )
        paths[key] = str(model)
    return paths


def random_search(study: StudyConfig, spec: TrialSpec) -> None:
    """run_search's twin with the searcher and scheduler swapped: random points, no early
    stopping."""
    slug = protocol_slug(spec.protocol)
    searcher = HonestOptunaSearch(
        space=search_space,
        metric="miou",
        mode="max",
        points_to_evaluate=[spec.paper_point.searched()],
        max_iterations=spec.distill.iterations,
        sampler=optuna.samplers.RandomSampler(seed=study.seed),
        storage=optuna.storages.RDBStorage(study.storage.resolved_optuna_storage()),
        study_name=f"mgd-{slug}",
    )
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=FIFOScheduler(),
        num_samples=study.budget.num_samples,
        max_concurrent_trials=study.cluster.max_concurrent_trials,
    )
    recorder = TrialRecorder(
        study.storage.output_dir,
        spec.protocol,
        "search",
        spec.distill.iterations,
        study.cluster.device,
        study.cluster.devices_per_trial,
        study.verbose,
    )
    tune_run(study, f"search-{slug}", param_space(spec), tune_config, recorder)


def summarise(output_dir: str, protocol: str) -> list:
    """[best final mIoU, its trial's iterations, device-hours to reach it, device-hours in all,
    completed / early-stopped / failed trial counts]."""
    records = read_records(output_dir, protocol)
    # the study's rule: an early-stopped trial's mIoU is from fewer iterations
    best = best_trial(records)
    ended = sorted((r for r in records if r.ended_at), key=lambda r: r.ended_at)
    to_best = sum(r.device_hours for r in ended[: ended.index(best) + 1]) if best else float("nan")
    counts = {
        s: sum(r.status == s for r in records) for s in ("completed", "early_stopped", "failed")
    }
    return [
        best.miou if best else float("nan"),
        best.iteration if best else "-",
        to_best * 3600,
        sum(r.device_hours for r in records) * 3600,
        f"{counts['completed']} / {counts['early_stopped']} / {counts['failed']}",
    ]


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument("--trials", type=int, default=6, help="trial budget of each searcher")
    p.add_argument("--iterations", type=int, default=8, help="student iterations per trial")
    p.add_argument("--eval-every", type=int, default=2, help="ASHA rungs come from these reports")
    p.add_argument("--crop-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument(
        "--teacher-iterations",
        type=int,
        default=20,
        help="CPS iterations of each teacher (0: random)",
    )
    p.add_argument("--protocol", default="1/8")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="4 trials of 4 iterations each")
    return p


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.trials, args.iterations = 4, 4
    print(f"machine: {machine()}")
    teachers = trained_teachers(args.crop_size, args.batch_size, args.teacher_iterations)
    # 2 trials in flight on the 2 cores; every trial gives its reservation back as it ends, with or
    # without the dashboard (mgd_ray.distributed.cluster).
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    root = tempfile.mkdtemp(prefix="bench-search-")
    rows = []
    for name in ("TPE + ASHA (the study)", "random, no early stopping"):
        study = StudyConfig.from_options(
            output_dir=os.path.join(root, "tpe" if name.startswith("TPE") else "random"),
            protocols=(args.protocol,),
            num_samples=args.trials,
            iterations=args.iterations,
            eval_every=args.eval_every,
            crop_size=args.crop_size,
            batch_size=args.batch_size,
            loader_workers=0,
            ablation=False,
            seed=args.seed,
            verbose=False,
            max_concurrent_trials=2,
            teacher_deep_checkpoint=teachers["teacher_deep_checkpoint"],
            teacher_wide_checkpoint=teachers["teacher_wide_checkpoint"],
        )
        os.makedirs(study.storage.output_dir)  # the Optuna SQLite file lives there
        (spec,) = prepare_teachers(study, [plan_protocol(study, args.protocol)])
        (run_search(study, spec) if name.startswith("TPE") else random_search(study, spec))
        rows.append([name, *summarise(study.storage.output_dir, args.protocol)])
    ray.shutdown()
    print(
        f"\nbudget: {args.trials} trials each, {args.iterations} iterations per trial (evaluated "
        f"every {args.eval_every}), crop {args.crop_size}, batch {args.batch_size}, protocol "
        f"{args.protocol}, seed {args.seed}, teachers after {args.teacher_iterations} CPS "
        "iterations; 2 trials in flight, 1 CPU each"
    )
    print(
        table(
            [
                "searcher",
                "best final mIoU",
                "at iteration",
                "CPU-s to reach it",
                "CPU-s in all",
                "completed / early-stopped / failed",
            ],
            rows,
        )
    )
    print(f"results: {root}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
