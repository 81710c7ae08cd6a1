"""Data pipeline (issue 8, item 4), in one process:

a. Images/s the engine's data stream (batches.IterationData: labeled B + unlabeled 2B per
   iteration, the synthetic preset's augmentation) delivers on its own, per number of loader
   workers.
b. Images/s the distillation step consumes and the share of its time it waits on data, both as
   distill_student itself reports them ("iter_per_s", "data_wait_share" of its last report window,
   start-up and evaluation excluded), per number of loader workers; runs interleaved.

The study's default is 1 loader worker per training worker (--loader-workers);
DataConfig's own default is 2.

    python benchmarks/data_pipeline.py           # workers 0 / 1 / 2, 2 rounds, windows of 2
                                                 # iterations
    python benchmarks/data_pipeline.py --quick   # 1 round
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

import torch
from common import arg_parser, machine, median, random_teachers, synthetic_distill_config, table

from mgd_ray.config import DistillConfig
from mgd_ray.data import build_datasets
from mgd_ray.engine import LocalContext, distill_student
from mgd_ray.engine.batches import IterationData, iteration_loader


def loader_rate(cfg: DistillConfig, batches: int) -> float:
    """Images/s the data stream delivers, after its first item (worker start-up)."""
    data = build_datasets(cfg.data)
    items = IterationData(data.labeled, data.unlabeled, cfg.data, world=1, rank=0)
    stream = iter(
        iteration_loader(items, range(batches + 1), cfg.data.num_workers, torch.device("cpu"))
    )
    next(stream)
    start = time.perf_counter()
    images = sum(len(item["x_l"]) + len(item["u"]) for item in stream)
    return images / (time.perf_counter() - start)


def training_run(cfg: DistillConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
        ctx = LocalContext(folder, verbose=False)
        distill_student(cfg, ctx)
        return ctx.history[-1]


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument(
        "--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts to compare"
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument(
        "--window", type=int, default=2, help="iterations per report window (each run does 2)"
    )
    p.add_argument(
        "--loader-batches", type=int, default=15, help="batches timed per loader measurement"
    )
    p.add_argument("--quick", action="store_true", help="1 round")
    return p


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds = 1
    if min(args.workers) < 0 or args.rounds < 1 or args.window < 1:
        raise SystemExit("--workers >= 0, --rounds >= 1, --window >= 1 expected")
    print(f"machine: {machine()}")
    base = synthetic_distill_config(iterations=2 * args.window, eval_every=args.window)
    base = DistillConfig.from_dict({**base.to_dict(), **random_teachers(base)})
    per_iteration = 3 * base.data.batch_size
    print(
        f"run: {base.student}, crop {base.data.crop_size}, batch {base.data.batch_size} (+"
        f"{2 * base.data.batch_size} unlabeled = {per_iteration} images per iteration), "
        f"{torch.get_num_threads()} torch threads; {args.rounds} interleaved rounds, medians"
    )
    configs = {
        w: dataclasses.replace(base, data=dataclasses.replace(base.data, num_workers=w))
        for w in args.workers
    }
    delivered = {w: [] for w in args.workers}
    reports = {w: [] for w in args.workers}
    for _ in range(args.rounds):
        for w, cfg in configs.items():
            delivered[w].append(loader_rate(cfg, args.loader_batches))
            reports[w].append(training_run(cfg))
    columns = [
        "loader workers",
        "loaders alone: images/s",
        "step consumes: images/s",
        "supply / demand",
        "data wait share (from the loop)",
    ]
    rows = []
    for w in args.workers:
        consumed = median([r["iter_per_s"] for r in reports[w]]) * per_iteration
        supplied = median(delivered[w])
        wait_share = median([r["data_wait_share"] for r in reports[w]])
        rows.append([w, supplied, consumed, supplied / consumed, wait_share])
    print(table(columns, rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
