"""What the benchmark scripts share: their argument parser, the machine line, interleaved timing,
the dense-matmul reference rate, the default synthetic run's config, and random-weight teacher
files.

Benchmarks print figures; they assert nothing (tests do that). Every comparison is measured in one
process, with the repetitions of its variants interleaved (A B A B ...) so that load from other
users of this shared machine falls on all variants alike; figures are medians.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
# `python benchmarks/x.py` from a checkout without the editable install
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mgd_ray.config import DistillConfig, TeacherConfig  # noqa: E402
from mgd_ray.data import NUM_CLASSES  # noqa: E402
from mgd_ray.engine.checkpoint import atomic_save  # noqa: E402
from mgd_ray.engine.presets import preset_configs  # noqa: E402
from mgd_ray.models import build_model  # noqa: E402

CACHE = Path(os.environ.get("MGD_BENCH_CACHE", Path.home() / ".cache" / "mgd_ray" / "benchmarks"))


def arg_parser(doc: str) -> argparse.ArgumentParser:
    """A benchmark script's parser, described by the first paragraph of its docstring `doc`."""
    return argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )


def machine() -> str:
    """One line: CPU model, cores, torch version and intra-op threads (and the GPU, if any)."""
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(
            line.split(":", 1)[1].strip()
            for line in out.splitlines()
            if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} torch threads{gpu}"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of one call, with the device drained before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def interleaved(
    variants: dict[str, Callable[[], object]], rounds: int, device: torch.device, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each variant over `rounds` rounds, one call of every variant per round
    (after `warmup` untimed rounds)."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(time_call(fn, device))
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def matmul_macs(n: int) -> int:
    return n**3


def matmul_call(
    n: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> Callable[[], object]:
    """One n x n @ n x n product (n^3 multiply-accumulates): the machine's reference dense rate."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return lambda: a @ b


def synthetic_distill_config(
    student: str = "deeplabv3plus_resnet18",
    protocol: str = "1/8",
    data: dict | None = None,
    iterations: int | None = None,
    eval_every: int | None = None,
) -> DistillConfig:
    """The default synthetic study's student run, built as the study builds it
    (engine.presets.preset_configs: crop, batch, lr with warm-up, paper weights); `data` changes
    DataConfig fields, `iterations` / `eval_every` the schedule."""
    data = {"split_out_dir": str(CACHE / "splits"), **(data or {})}
    distill, _ = preset_configs(
        "synthetic", protocol, student, data=data, iterations=iterations, eval_every=eval_every
    )
    return distill


def random_teachers(cfg: DistillConfig) -> dict[str, str]:
    """{"teacher_deep_checkpoint", "teacher_wide_checkpoint"}: state-dict files of randomly
    initialised teachers (seeded, cached). Speed does not depend on the weights, so throughput
    benchmarks need no trained teacher."""
    num_classes = NUM_CLASSES[cfg.data.dataset]
    paths = {}
    for key, arch in (
        ("teacher_deep_checkpoint", cfg.teacher_deep),
        ("teacher_wide_checkpoint", cfg.teacher_wide),
    ):
        path = CACHE / f"random-{arch}-{num_classes}.pt"
        if not path.exists():
            torch.manual_seed(0)
            atomic_save(build_model(arch, num_classes).state_dict(), str(path))
        paths[key] = str(path)
    return paths


def teacher_config(cfg: DistillConfig, arch: str, iterations: int) -> TeacherConfig:
    """A CPS teacher run of `iterations` on the same data as the student run `cfg`, built as the
    study builds it (the preset's teacher recipe), evaluated once at its end."""
    data = {
        k: v
        for k, v in dataclasses.asdict(cfg.data).items()
        if k not in ("dataset", "protocol", "seed")
    }
    _, teachers = preset_configs(
        cfg.data.dataset,
        cfg.data.protocol,
        cfg.student,
        data=data,
        teacher_iterations=iterations,
        teacher_eval_every=iterations,
        seed=cfg.data.seed,
    )
    return teachers[arch]


def table(header: list[str], rows: list[list[object]]) -> str:
    """A Markdown table (what docs/benchmarks.md holds), floats to 3 significant figures."""

    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
