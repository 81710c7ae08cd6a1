"""Engine throughput (issue 8, items 1 and 2), all in one process, repetitions interleaved:

1. MGD distillation iterations/s and images/s per student, and the utilisation ratio: the
   multiply-accumulates of one iteration (counted by torch.utils.flop_counter over the student's
   forward + backward and the teacher forwards the step really runs) per second, over the MAC rate
   of a dense n x n matmul timed in the same rounds. Components (student forward + backward alone,
   each teacher's forward alone) get their own ratio, which says where the time goes.
2. The step time and the share of it spent in teacher forwards, side by side (issue 12 item 5):
   eval-mode BN batched; the paper's train-mode BN as the official code runs it (one forward per
   named batch, with and without autograd); and the engine's default, train-mode BN in one batched
   forward whose BN normalises each named batch on its own (batch_groups). Ratios are over the
   eval-mode batched step of the same run. The student's own forward + backward with BN statistics
   per batch (x_m, x_l: as the official two forwards) is compared with one joint-BN forward.

    python benchmarks/engine.py              # synthetic preset: crop 64, batch 4, both students
    python benchmarks/engine.py --quick      # 2 rounds, ResNet-18 only

The iteration timed here is the step of distill_student on batches already in memory (losses,
backward, SGD step, one host read of the logged values); data loading is
benchmarks/data_pipeline.py. On CUDA the step runs as the engine runs it there: bf16 autocast,
channels_last, and the reference is a bf16 matmul.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from common import (
    arg_parser,
    interleaved,
    machine,
    matmul_call,
    matmul_macs,
    median,
    random_teachers,
    synthetic_distill_config,
    table,
)
from torch.utils.flop_counter import FlopCounterMode

from mgd_ray.config import STUDENTS
from mgd_ray.data import build_datasets, cutmix_mask, mix
from mgd_ray.engine import mgd_step
from mgd_ray.engine import targets as targets_module
from mgd_ray.engine.batch_groups import batch_groups
from mgd_ray.engine.batches import Batch
from mgd_ray.engine.device import autocast, to_device
from mgd_ray.engine.optim import build_optimizer
from mgd_ray.engine.targets import live_targets, load_teacher
from mgd_ray.losses import supervised_loss, weighted_total
from mgd_ray.models import build_model

ENGINE_TEACHER_FORWARD = targets_module.teacher_forward


def separate_forwards(teacher, images, autograd: bool):
    """The reference-code way: one forward per named batch; with `autograd`, the teacher's
    parameters require grad and the forward records a graph (outputs detached, as a frozen target
    would be)."""
    if not autograd:
        with torch.no_grad():
            return {name: teacher(x) for name, x in images.items()}
    teacher.requires_grad_(True)
    try:
        with torch.enable_grad():
            return {
                name: {k: v.detach() for k, v in teacher(x).items()} for name, x in images.items()
            }
    finally:
        teacher.requires_grad_(False)


def in_mode(train_bn: bool, way):
    """`way` with the teacher's BN in train mode (the paper's: batch statistics) or eval mode."""

    def run(teacher, images):
        targets_module.freeze(teacher, train_bn)
        return way(teacher, images)

    return run


# Issue 12 item 5: the paper's train-mode teachers must not give back the speed of batching. The
# engine's batched forward in train mode normalises each named batch with its own statistics
# (batch_groups); "separate" is the official code's way, one forward per named batch.
TEACHER_WAYS = {
    "eval BN, batched": in_mode(False, ENGINE_TEACHER_FORWARD),
    "train BN, separate": in_mode(True, partial(separate_forwards, autograd=False)),
    "train BN, batched (engine default)": in_mode(True, ENGINE_TEACHER_FORWARD),
    "train BN, separate, autograd (official)": in_mode(
        True, partial(separate_forwards, autograd=True)
    ),
}


class TeacherClock:
    """Replaces targets.teacher_forward with `way`, timing every call (device drained at both
    ends)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.seconds = device, 0.0

    @contextmanager
    def use(self, way):
        def timed(teacher, images):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            start = time.perf_counter()
            out = way(teacher, images)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds += time.perf_counter() - start
            return out

        targets_module.teacher_forward = timed
        try:
            yield
        finally:
            targets_module.teacher_forward = ENGINE_TEACHER_FORWARD


class StudentBench:
    """One student's MGD step on a fixed batch of the synthetic set, as distill_student runs it."""

    def __init__(
        self, student: str, device: torch.device, crop: int | None, batch: int | None
    ) -> None:
        data = {k: v for k, v in (("crop_size", crop), ("batch_size", batch)) if v}
        cfg = synthetic_distill_config(student, data=data)
        cfg = type(cfg).from_dict({**cfg.to_dict(), **random_teachers(cfg)})
        self.cfg, self.device = cfg, device
        sets = build_datasets(cfg.data)
        b = cfg.data.batch_size
        x_l, y = zip(*(sets.labeled[i] for i in range(b)))
        u = torch.stack([sets.unlabeled[i] for i in range(2 * b)])
        self.x_l = to_device(torch.stack(x_l), device, True)
        self.y = to_device(torch.stack(y), device)
        self.u0, self.u1 = to_device(u, device, True).chunk(2)
        self.mask = cutmix_mask(
            b, cfg.data.crop_size, cfg.data.crop_size, torch.Generator().manual_seed(0)
        ).to(device)
        self.images_per_iteration = 3 * b  # B labeled + 2B unlabeled (u0, u1)
        self.deep = load_teacher(
            cfg.teacher_deep,
            sets.num_classes,
            cfg.teacher_deep_checkpoint,
            "teacher_deep_checkpoint",
            device,
            cfg.teacher_train_mode,
        )
        self.wide = load_teacher(
            cfg.teacher_wide,
            sets.num_classes,
            cfg.teacher_wide_checkpoint,
            "teacher_wide_checkpoint",
            device,
            cfg.teacher_train_mode,
        )
        torch.manual_seed(0)
        self.student = build_model(student, sets.num_classes, cfg.student_output_stride).to(device)
        if device.type == "cuda":
            self.student = self.student.to(memory_format=torch.channels_last)
        self.student.train()
        self.optimizer = build_optimizer([self.student], cfg.optim)
        self.weights = cfg.weights.as_dict()
        self.amp = cfg.amp

    def step(self) -> None:
        """losses -> one host read (the engine's divergence check) -> backward -> SGD step."""
        with autocast(self.device, self.amp):
            active = mgd_step.active_terms(self.weights)
            targets = live_targets(
                self.deep, self.wide, self.x_l, self.u0, self.u1, self.mask, active
            )
            batch = Batch(self.x_l, self.y, self.u0, self.u1, self.mask)
            terms, stats = mgd_step.mgd_losses(
                self.student,
                batch,
                targets,
                active,
                self.cfg.confidence_threshold,
                supervised_loss,
            )
            total = weighted_total(terms, self.weights)
        torch.stack([total.detach().float(), stats["kept_fraction"].float()]).tolist()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()

    def student_only(self, per_batch_bn: bool = True) -> None:
        """The student's share of the step: forward + backward on [x_m; x_l] and the SGD step, BN
        statistics per batch as the engine computes them (or over the joint batch)."""
        with autocast(self.device, self.amp), batch_groups(self.student, 2 if per_batch_bn else 1):
            out = self.student(torch.cat([mix(self.mask, self.u0, self.u1), self.x_l]))
            loss = F.cross_entropy(
                out["logits"][self.x_l.shape[0] :].float(), self.y, ignore_index=255
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def teacher_images(self) -> dict[str, torch.Tensor]:
        return {
            "u0": self.u0,
            "u1": self.u1,
            "x_l": self.x_l,
            "x_m": mix(self.mask, self.u0, self.u1),
        }

    def teacher_only(self, teacher) -> None:
        # the engine's default; other variants switch modes
        targets_module.freeze(teacher, train_mode=True)
        with autocast(self.device, self.amp):
            ENGINE_TEACHER_FORWARD(teacher, self.teacher_images())

    def count_macs(self, fn) -> int:
        """Multiply-accumulates of one call (forward and backward ops alike; FLOPs / 2)."""
        counter = FlopCounterMode(display=False)
        with counter:
            fn()
        return counter.get_total_flops() // 2


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument(
        "--rounds", type=int, default=3, help="timed rounds, each running every variant once"
    )
    p.add_argument("--students", nargs="+", default=list(STUDENTS), choices=STUDENTS)
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the reference matmul")
    p.add_argument(
        "--crop-size", type=int, default=None, help="default: the synthetic preset's (64)"
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="default: the synthetic preset's (4)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--quick", action="store_true", help="2 rounds, ResNet-18 only")
    return p


def main(args: argparse.Namespace) -> None:
    if args.quick:
        args.rounds, args.students = 2, ["deeplabv3plus_resnet18"]
    if args.rounds < 1:
        raise SystemExit(f"--rounds={args.rounds}: expected >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    print(f"machine: {machine()}")
    benches = {s: StudentBench(s, device, args.crop_size, args.batch_size) for s in args.students}
    any_bench = next(iter(benches.values()))
    print(
        f"setup: synthetic, crop {any_bench.cfg.data.crop_size}, batch "
        f"{any_bench.cfg.data.batch_size} (+{2 * any_bench.cfg.data.batch_size} unlabeled), "
        f"weights {any_bench.weights}, device {device}, "
        f"{'bf16 autocast' if device.type == 'cuda' else 'fp32'}; {args.rounds} interleaved "
        "rounds, medians"
    )

    clock = TeacherClock(device)
    teacher_share: dict[tuple[str, str], list[float]] = {}

    def step_with(bench: StudentBench, student: str, way_name: str):
        def run():
            clock.seconds = 0.0
            start = time.perf_counter()
            with clock.use(TEACHER_WAYS[way_name]):
                bench.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            teacher_share.setdefault((student, way_name), []).append(
                clock.seconds / (time.perf_counter() - start)
            )

        return run

    variants = {"matmul": matmul_call(args.matmul_size, device, dtype)}
    macs = {"matmul": matmul_macs(args.matmul_size)}
    for s, bench in benches.items():
        for way_name in TEACHER_WAYS:
            variants[(s, "step", way_name)] = step_with(bench, s, way_name)
        variants[(s, "student")] = bench.student_only
        variants[(s, "student, joint BN")] = partial(bench.student_only, False)
        variants[(s, "teacher_deep")] = partial(bench.teacher_only, bench.deep)
        variants[(s, "teacher_wide")] = partial(bench.teacher_only, bench.wide)
        macs[(s, "step")] = bench.count_macs(bench.step)
        macs[(s, "student")] = bench.count_macs(bench.student_only)
        macs[(s, "teacher_deep")] = bench.count_macs(partial(bench.teacher_only, bench.deep))
        macs[(s, "teacher_wide")] = bench.count_macs(partial(bench.teacher_only, bench.wide))
    times = interleaved(variants, args.rounds, device)
    teacher_share = {
        k: v[-args.rounds :] for k, v in teacher_share.items()
    }  # drop the warm-up round

    matmul_rate = macs["matmul"] / median(times["matmul"])
    print(
        f"\nreference: {args.matmul_size}^2 {str(dtype).removeprefix('torch.')} matmul "
        f"{matmul_rate / 1e9:.1f} GMAC/s (median of {args.rounds})\n"
    )
    engine_way = "train BN, batched (engine default)"
    base_way = "eval BN, batched"
    rows, parts = [], []
    for s, bench in benches.items():
        step_s = median(times[(s, "step", engine_way)])
        rate = macs[(s, "step")] / step_s
        rows.append(
            [
                s.removeprefix("deeplabv3plus_"),
                1 / step_s,
                bench.images_per_iteration / step_s,
                macs[(s, "step")] / 1e9,
                rate / 1e9,
                rate / matmul_rate,
            ]
        )
        for part in ("student", "teacher_deep", "teacher_wide"):
            part_s = median(times[(s, part)])
            parts.append(
                [
                    s.removeprefix("deeplabv3plus_"),
                    part,
                    part_s * 1e3,
                    part_s / step_s,
                    macs[(s, part)] / 1e9,
                    macs[(s, part)] / part_s / 1e9,
                    macs[(s, part)] / part_s / matmul_rate,
                ]
            )
    print("1. MGD iteration (engine step)")
    print(
        table(
            ["student", "iter/s", "images/s", "GMACs/iter", "GMAC/s", "utilisation (/matmul)"],
            rows,
        )
    )
    print("\ncomponents, timed alone in the same rounds")
    print(
        table(
            ["student", "part", "ms", "share of step time", "GMACs", "GMAC/s", "utilisation"],
            parts,
        )
    )

    rows = []
    for s in benches:
        base = median(times[(s, "step", base_way)])
        for way_name in TEACHER_WAYS:
            step_s = median(times[(s, "step", way_name)])
            rows.append(
                [
                    s.removeprefix("deeplabv3plus_"),
                    way_name,
                    step_s * 1e3,
                    median(teacher_share[(s, way_name)]),
                    step_s / base,
                ]
            )
        joint, grouped = median(times[(s, "student, joint BN")]), median(times[(s, "student")])
        rows.append(
            [
                s.removeprefix("deeplabv3plus_"),
                "(student alone: BN per batch / joint BN)",
                grouped * 1e3,
                float("nan"),
                grouped / joint,
            ]
        )
    print("\n2. teacher forwards: share of the iteration; step time over the eval-BN batched step")
    print(
        table(
            [
                "student",
                "teacher forwards",
                "step ms",
                "teacher share",
                "step time / eval batched",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
