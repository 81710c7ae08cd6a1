"""Ray overhead (issue 8, item 3), in one process:

a. The same distill_student run (default synthetic student run, random-weight teachers) in a bare
   loop (LocalContext) and through a one-worker TorchTrainer (ray.init(num_cpus=2), the study's
   student_loop and RayContext), interleaved; both at the same torch thread count. Throughput is
   the engine's own "iter_per_s" of its last report window (evaluation excluded, start-up excluded:
   the run evaluates halfway and the second window is read).
b. Trial start-up: one trial of the default synthetic study's search (the study's own run_trial
   trainable and run config, 2 iterations, evaluating after each), timed by a Tune callback:
   start -> first result, minus first -> second result (one steady iteration + one evaluation).
   Set against the length of a default-study trial (400 iterations, 2 evaluations) at the measured
   rate.

    python benchmarks/ray_overhead.py            # 2 rounds of 2 x 4 iterations each way
    python benchmarks/ray_overhead.py --quick    # 1 round of 2 x 2 iterations
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

import ray  # noqa: E402  (benchmarks sit beside the distributed layer; mgd_ray's core stays Ray-free)
import ray.train
import torch
from common import (
    CACHE,
    arg_parser,
    machine,
    median,
    random_teachers,
    synthetic_distill_config,
    table,
)
from ray import tune
from ray.train.torch import TorchTrainer

from mgd_ray.config import DistillConfig
from mgd_ray.distributed.phases.teachers import prepare_teachers
from mgd_ray.distributed.phases.tune import TRIAL_DRIVER_RESOURCES
from mgd_ray.distributed.plan import plan_protocol
from mgd_ray.distributed.spec import param_space
from mgd_ray.distributed.study_config import StudyConfig
from mgd_ray.distributed.trial import JOB_KEY, run_trial, student_loop
from mgd_ray.engine import LocalContext, distill_student


def bench_loop(config: dict) -> None:
    """train_loop_per_worker: the study's student_loop (on config[JOB_KEY], a trial's
    DistillConfig) at a fixed torch thread count; the thread count Ray gave the worker is written
    to config["probe"] first."""
    with open(config["probe"], "w") as f:
        json.dump(
            {"default_threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")},
            f,
        )
    torch.set_num_threads(config["threads"])
    student_loop(config)


def run_bare(cfg: DistillConfig, threads: int) -> tuple[float, float]:
    """(iter/s of the last report window, wall seconds) of distill_student in this process."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="bench-bare-") as folder:
        ctx = LocalContext(folder, verbose=False)
        start = time.perf_counter()
        distill_student(cfg, ctx)
        return ctx.history[-1]["iter_per_s"], time.perf_counter() - start


def run_ray(cfg: DistillConfig, threads: int, storage: str, probe: str) -> tuple[float, float]:
    trainer = TorchTrainer(
        bench_loop,
        train_loop_config={JOB_KEY: cfg, "threads": threads, "probe": probe},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 2}),
        run_config=ray.train.RunConfig(name=f"bench-{time.time_ns()}", storage_path=storage),
    )
    start = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"Ray run failed: {result.error}")
    return result.metrics["iter_per_s"], time.perf_counter() - start


class FirstResults(tune.Callback):
    """Wall-clock times of each trial's start and of its results."""

    def __init__(self) -> None:
        self.start: dict[str, float] = {}
        self.results: dict[str, list[float]] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.start[trial.trial_id] = time.time()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.results.setdefault(trial.trial_id, []).append(time.time())


def trial_startup(storage: str) -> dict:
    """One default-study search trial (2 iterations, an evaluation after each) through Tune."""
    teachers = random_teachers(synthetic_distill_config())
    study = StudyConfig.from_options(
        output_dir=os.path.join(storage, "study"),
        protocols=("1/8",),
        iterations=2,
        eval_every=1,
        teacher_deep_checkpoint=teachers["teacher_deep_checkpoint"],
        teacher_wide_checkpoint=teachers["teacher_wide_checkpoint"],
        verbose=False,
    )
    plan = plan_protocol(study, "1/8")
    data = dataclasses.replace(plan.distill.data, split_out_dir=str(CACHE / "splits"))
    (spec,) = prepare_teachers(
        study, [dataclasses.replace(plan, distill=dataclasses.replace(plan.distill, data=data))]
    )
    callback = FirstResults()
    tuner = tune.Tuner(
        tune.with_resources(run_trial, TRIAL_DRIVER_RESOURCES),
        param_space={**param_space(spec), **spec.paper_point.searched()},
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(
            name="startup", storage_path=storage, callbacks=[callback], verbose=0
        ),
    )
    tuner.fit()
    ((trial_id, results),) = callback.results.items()
    if len(results) < 2:
        raise RuntimeError(f"trial {trial_id} reported {len(results)} result(s), expected 2")
    first = results[0] - callback.start[trial_id]
    steady = results[1] - results[0]
    return {
        "to_first_result": first,
        "iteration_plus_eval": steady,
        "startup": first - steady,
        "threads": spec.run.cpus_per_worker,
    }


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument("--rounds", type=int, default=2, help="bare / Ray pairs, interleaved")
    p.add_argument(
        "--window", type=int, default=4, help="iterations per timed window (each run does 2)"
    )
    p.add_argument("--threads", type=int, default=2, help="torch threads in both paths")
    p.add_argument("--quick", action="store_true", help="1 round, windows of 2 iterations")
    p.add_argument("--no-startup", action="store_true", help="skip the trial start-up measurement")
    return p


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.window = 1, 2
    if args.rounds < 1 or args.window < 1:
        raise SystemExit("--rounds and --window: expected integers >= 1")
    print(f"machine: {machine()}")
    cfg = synthetic_distill_config(
        iterations=2 * args.window, eval_every=args.window, data={"num_workers": 1}
    )
    cfg = DistillConfig.from_dict({**cfg.to_dict(), **random_teachers(cfg)})
    print(
        f"run: {cfg.student}, crop {cfg.data.crop_size}, batch {cfg.data.batch_size}, "
        f"{cfg.data.num_workers} loader worker(s) (the study's default), {args.threads} torch "
        f"threads, {cfg.iterations} iterations (timed window: the last {args.window}); "
        f"{args.rounds} interleaved rounds"
    )
    # Every run asks for the 2 cores and runs alone. Logical CPUs are padded by 2 per run (+1 for
    # the start-up trial): when another Ray instance runs on this machine (other users' tests
    # here), Ray Train's PlacementGroupCleaner cannot tell which is its own ("Found multiple active
    # Ray instances") and each finished run leaks its placement group; unpadded, the next run waits
    # forever.
    ray.init(
        num_cpus=2 * (args.rounds + 1) + 1,
        include_dashboard=False,
        logging_level="ERROR",
        log_to_driver=False,
    )
    storage = tempfile.mkdtemp(prefix="bench-ray-")
    probe = os.path.join(storage, "probe.json")
    rates = {"bare loop": [], "TorchTrainer (1 worker)": []}
    walls = {name: [] for name in rates}
    for _ in range(args.rounds):
        for name, run in (
            ("bare loop", lambda: run_bare(cfg, args.threads)),
            ("TorchTrainer (1 worker)", lambda: run_ray(cfg, args.threads, storage, probe)),
        ):
            rate, wall = run()
            rates[name].append(rate)
            walls[name].append(wall)
    bare = median(rates["bare loop"])
    rows = [[name, median(r), median(r) / bare, median(walls[name])] for name, r in rates.items()]
    print("\na. same iterations, bare loop vs one-worker TorchTrainer")
    print(
        table(
            ["path", "iter/s (last window)", "vs bare", "run wall s (incl. start, 2 evals)"], rows
        )
    )
    with open(probe) as f:
        given = json.load(f)
    print(
        f"Ray worker's own torch threads before the benchmark set {args.threads}: "
        f"{given['default_threads']} (OMP_NUM_THREADS={given['omp']}, from its CPU resources)"
    )

    if not args.no_startup:
        s = trial_startup(storage)
        ray_rate = median(rates["TorchTrainer (1 worker)"])
        evaluation = max(s["iteration_plus_eval"] - 1 / ray_rate, 0.0)
        length = s["startup"] + 400 / ray_rate + 2 * evaluation
        print(
            "\nb. trial start-up (default synthetic study trial: 1 worker x "
            f"{s['threads']} CPU, as the study schedules it)"
        )
        print(
            table(
                [
                    "trial start -> first result s",
                    "one iteration + eval s",
                    "start-up s",
                    "default trial length s (est.)",
                    "start-up share",
                ],
                [
                    [
                        s["to_first_result"],
                        s["iteration_plus_eval"],
                        s["startup"],
                        length,
                        s["startup"] / length,
                    ]
                ],
            )
        )
        print(
            "default trial length = start-up + 400 iterations at the TorchTrainer rate above + 2 "
            "evaluations"
        )
    ray.shutdown()


if __name__ == "__main__":
    main(get_args_parser().parse_args())
