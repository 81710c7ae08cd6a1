"""Single-process runner (no Ray), for debugging and for the "does distillation help?" check:

    python -m mgd_ray.engine.runner --protocol 1/8

trains both CPS teachers on the synthetic set (or reuses their model.pt files in --output-dir),
then for each student seed two students from the same labeled split, initial weights and iteration
budget, supervised only and full MGD with the paper's weights, and prints their mIoU side by side,
the mean of each variant over the seeds and the per-seed MGD gain.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import statistics

import torch

from ..config import TEACHER_DEEP, TEACHER_WIDE, DistillConfig, LossWeights, TeacherConfig
from ..models.pretrained import resolve_pretrained
from .checkpoint import atomic_save, load_model_state
from .context import LocalContext
from .distill import distill_student
from .presets import preset_configs
from .teacher import train_teacher


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--protocol", default="1/8", help="labeled share of the training set (default 1/8)"
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=150,
        help="iterations of each student (default 150)",
    )
    parser.add_argument(
        "--teacher-iterations",
        type=positive_int,
        default=2000,
        help="iterations of each teacher (default 2000; teachers are trained longer than "
        "students, as in the paper)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the labeled split and of the teachers"
    )
    parser.add_argument(
        "--student-seeds",
        type=int,
        nargs="+",
        default=[0, 1, 2, 3, 4],
        metavar="SEED",
        help="student initialisation and augmentation seeds, one supervised + one MGD student "
        "each, all on the same split and teachers (default 0 1 2 3 4: one seed's gap is "
        "within the run-to-run noise)",
    )
    parser.add_argument(
        "--output-dir", default="./results/runner", help="teachers, students and their metrics"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--student", default="deeplabv3plus_resnet18")
    parser.add_argument(
        "--pretrained",
        default="none",
        choices=["imagenet", "none"],
        help="start every network from torchvision's ImageNet weights, or from scratch (default "
        "none: the synthetic set trains from scratch)",
    )
    parser.add_argument(
        "--pretrained-dir",
        default=None,
        help="folder holding torchvision's ImageNet files, looked at before torch hub's cache",
    )
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader workers (0 suits 2 cores)"
    )
    parser.add_argument("--quiet", action="store_true", help="no per-report lines")
    return parser


def teacher_model_path(output_dir: str, role: str) -> str:
    return os.path.join(output_dir, f"teacher_{role}.pt")


def plan(
    args: argparse.Namespace,
) -> tuple[dict[str, TeacherConfig], dict[tuple[str, int], DistillConfig]]:
    """The teachers' configs by role and the students' by (variant, seed), built (hence validated)
    before any training, so a bad option fails in a second rather than after the teachers' half
    hour. With --pretrained imagenet the ImageNet files are found (or downloaded) here too."""
    imagenet = resolve_pretrained(
        [args.student, TEACHER_DEEP, TEACHER_WIDE], args.pretrained, args.pretrained_dir
    )
    distill, by_arch = preset_configs(
        "synthetic",
        args.protocol,
        args.student,
        data={
            "num_workers": args.num_workers,
            "split_out_dir": os.path.join(args.output_dir, "split"),
        },
        iterations=args.iterations,
        teacher_iterations=args.teacher_iterations,
        teacher_eval_every=max(1, args.teacher_iterations // 4),
        imagenet=imagenet,
        seed=args.seed,
    )
    teachers = {"deep": by_arch[TEACHER_DEEP], "wide": by_arch[TEACHER_WIDE]}
    distill = dataclasses.replace(
        distill,
        teacher_deep_checkpoint=teacher_model_path(args.output_dir, "deep"),
        teacher_wide_checkpoint=teacher_model_path(args.output_dir, "wide"),
    )
    variants = {
        "supervised": LossWeights(sup=1.0, pixel=0.0, semantic=0.0, region=0.0),
        "mgd": distill.weights,
    }
    students = {
        (variant, seed): dataclasses.replace(distill, weights=weights, seed=seed)
        for seed in dict.fromkeys(args.student_seeds)
        for variant, weights in variants.items()
    }
    return teachers, students


def train_or_reuse_teacher(
    role: str, cfg: TeacherConfig, args: argparse.Namespace, device: torch.device
) -> None:
    """Train the teacher into teacher_<role>.pt unless it is already there (an interrupted run
    resumes)."""
    path = teacher_model_path(args.output_dir, role)
    if os.path.isfile(path):
        print(f"reusing teacher_{role} ({cfg.arch}) from {path}", flush=True)
        return
    ctx = LocalContext(
        os.path.join(args.output_dir, f"teacher_{role}_run"), device, verbose=not args.quiet
    )
    metrics = train_teacher(cfg, ctx)
    print(
        f"teacher_{role} ({cfg.arch}): mIoU {metrics['miou']:.4f}",
        flush=True,
    )
    checkpoint = ctx.latest_checkpoint()
    atomic_save(load_model_state(os.path.join(checkpoint, "model.pt")), path)
    # The resume checkpoint (both CPS branches and their momentum: 1.2-1.6 GB for these teachers)
    # is spent once teacher_<role>.pt exists; the run's metrics.jsonl stays.
    shutil.rmtree(checkpoint)


def main(args: argparse.Namespace, configs: tuple | None = None) -> list[dict]:
    teachers, students = configs or plan(args)
    device = torch.device(args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    for role, cfg in teachers.items():
        train_or_reuse_teacher(role, cfg, args, device)
    rows = []
    for (variant, seed), cfg in students.items():
        run_dir = os.path.join(args.output_dir, f"student_{variant}-seed{seed}")
        # a fresh run: both variants get the same budget
        shutil.rmtree(run_dir, ignore_errors=True)
        metrics = distill_student(cfg, LocalContext(run_dir, device, verbose=not args.quiet))
        rows.append(
            {"student": args.student, "variant": variant, "seed": seed, "miou": metrics["miou"]}
        )
    print(format_results(rows, args))
    return rows


def format_results(rows: list[dict], args: argparse.Namespace) -> str:
    """Per-seed mIoUs, then per variant the mean and sample std over seeds, and MGD minus
    supervised."""
    lines = [
        f"\nprotocol {args.protocol}, split seed {args.seed}, {args.iterations} student "
        f"iterations, {args.teacher_iterations} teacher iterations",
        f"{'student':<28} {'variant':<12} {'seed':>4} {'mIoU':>7}",
    ]
    lines += [
        f"{r['student']:<28} {r['variant']:<12} {r['seed']:>4} {r['miou']:>7.4f}" for r in rows
    ]
    by_variant = {v: [r["miou"] for r in rows if r["variant"] == v] for v in ("supervised", "mgd")}
    if len(by_variant["mgd"]) > 1:
        for variant, values in by_variant.items():
            lines.append(
                f"{variant:<12} mean {statistics.mean(values):.4f} +- "
                f"{statistics.stdev(values):.4f} over {len(values)} seeds"
            )
        gains = [m - s for s, m in zip(by_variant["supervised"], by_variant["mgd"])]
        lines.append(
            f"MGD - supervised: mean {statistics.mean(gains):+.4f}, ahead on "
            f"{sum(g > 0 for g in gains)} of {len(gains)} seeds"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = get_args_parser()
    args = parser.parse_args()
    try:
        configs = plan(args)
    except (
        ValueError,
        OSError,
    ) as e:  # bad options, or ImageNet files neither here nor downloadable
        parser.error(str(e))
    main(args, configs)
