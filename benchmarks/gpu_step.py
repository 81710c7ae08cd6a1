"""One training iteration of every run a VOC study makes, at the paper's crop (512), on one GPU:
step time, images/s, peak GPU memory and bf16 utilisation, per images-per-device.

Runs: the CPS teacher runs (two branches of ResNet-101 / WRN-50-2) and the MGD student runs
(ResNet-18 / MobileNetV2 from both frozen teachers, train-mode teacher BN as the paper). Each is
the engine's own task (CPSTask / MGDTask) with the VOC preset's config (21 classes, lr, OHEM
setting, bf16 autocast and channels_last as the engine runs on CUDA), stepped by the loop's own
`optimizer_step` (the host read that is the divergence check, backward, SGD). Inputs are random
tensors of the crop size already on the GPU (data loading is benchmarks/data_pipeline.py); teachers
and students have random weights (speed and memory do not depend on them).

Before and after issue 22 in one run: each run is measured per BN implementation (`--bn`: the
paper's per-batch statistics by one native call per named batch, "calls", or in one pass,
"one_pass"; and one joint BN call over the whole batch, "joint", the measure of what per-batch
statistics cost) and per compile setting (`--compile`: off, the eager step; on, the student or
CPS branches compiled by inductor and the frozen teachers captured in CUDA graphs, as
engine/device.py's compile_for_device does). `--profile N` adds kernel launches per step (kernel
and CUDA-graph launches) and GPU kernel time per step over N further steps.

Images per device: 2 is the official recipe (total batch 8 over 4 GPUs), 8 the whole batch on one
GPU. Peak memory is torch's max_memory_allocated / max_memory_reserved over warm-up and timed
steps; the CUDA context (not counted by torch) is printed once. "fits 24 GB" compares reserved +
context with an A10G's 24 GB (22.0 GiB usable after the driver's share). Utilisation is the step's
multiply-accumulates (torch.utils.flop_counter: convolutions and matrix products) per second over
the rate of a bf16 n x n matmul timed in the same process.

    python benchmarks/gpu_step.py                    # both teachers, both students, 2 and 8 images
    python benchmarks/gpu_step.py --images 2 --steps 5
    python benchmarks/gpu_step.py --runs deeplabv3plus_resnet101 deeplabv3plus_resnet18 \
        --bn calls one_pass joint --compile off on --profile 2     # issue 22: before and after
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from contextlib import nullcontext
from types import SimpleNamespace

import torch
from common import arg_parser, machine, matmul_call, matmul_macs, median, table
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from mgd_ray.config import STUDENTS, TEACHER_DEEP, TEACHER_WIDE
from mgd_ray.data import cutmix_mask
from mgd_ray.engine.batch_groups import IMPLS, set_batch_norm_impl
from mgd_ray.engine.batches import Batch
from mgd_ray.engine.checkpoint import atomic_save
from mgd_ray.engine.context import LocalContext
from mgd_ray.engine.device import autocast, compile_for_device, to_device
from mgd_ray.engine.distill import MGDTask
from mgd_ray.engine.loop import optimizer_step
from mgd_ray.engine.optim import build_optimizer
from mgd_ray.engine.presets import preset_configs
from mgd_ray.engine.teacher import CPSTask
from mgd_ray.models import build_model

NUM_CLASSES = 21  # VOC
A10G_USABLE_GIB = 22.0


def inputs(images: int, crop: int, device: torch.device, seed: int = 0):
    """A Batch as the loop hands it to a task (images on the device, channels_last)."""
    g = torch.Generator().manual_seed(seed)
    x_l, u0, u1 = (
        to_device(torch.randn(images, 3, crop, crop, generator=g), device, True) for _ in range(3)
    )
    y = torch.randint(0, NUM_CLASSES, (images, crop, crop), generator=g)
    y[:, :8] = 255  # some ignored pixels, as VOC's borders
    return Batch(x_l, to_device(y, device), u0, u1, cutmix_mask(images, crop, crop, g).to(device))


def teacher_files(folder: str) -> dict[str, str]:
    paths = {}
    for key, arch in (
        ("teacher_deep_checkpoint", TEACHER_DEEP),
        ("teacher_wide_checkpoint", TEACHER_WIDE),
    ):
        paths[key] = f"{folder}/{arch}.pt"
        atomic_save(build_model(arch, NUM_CLASSES).state_dict(), paths[key])
    return paths


def build_run(name: str, images: int, device: torch.device, teachers: dict[str, str]):
    """(task, cfg) of one run of a VOC 1/8 study with `images` per device, built as the study
    builds it (engine.presets.preset_configs)."""
    student = name if name in STUDENTS else STUDENTS[0]
    distill, by_arch = preset_configs(
        "voc", "1/8", student, num_devices=8 // images, data={"root": "/nonexistent"}
    )
    ctx = LocalContext(tempfile.mkdtemp(prefix="gpu-step-"), device=device, verbose=False)
    if name in STUDENTS:
        cfg = dataclasses.replace(distill, **teachers)
        return MGDTask(cfg, SimpleNamespace(num_classes=NUM_CLASSES), ctx), cfg
    cfg = by_arch[name]
    return CPSTask(cfg, SimpleNamespace(num_classes=NUM_CLASSES), ctx), cfg


def prepare(task, impl: str, compiled: bool, device: torch.device) -> None:
    """Every network of the task with this per-batch BN implementation; compiled as the engine
    compiles them on CUDA when `compiled` (trained ones by inductor, frozen teachers captured)."""
    teachers = [getattr(task, name, None) for name in ("teacher_deep", "teacher_wide")]
    teachers = [teacher for teacher in teachers if teacher is not None]
    for model in (*task.models, *teachers):
        set_batch_norm_impl(model, impl)
    if compiled:
        torch._dynamo.reset()  # a fresh trace per run, not a cache grown by the previous ones
        for model in task.models:
            compile_for_device(model, device, enabled=True)
        for teacher in teachers:
            compile_for_device(teacher, device, enabled=True, frozen=True)


LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")


def measure(
    name: str,
    images: int,
    steps: int,
    device: torch.device,
    teachers: dict[str, str],
    bn: str = "calls",
    compiled: bool = False,
    profile_steps: int = 0,
    warmup: int = 3,
) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    task, cfg = build_run(name, images, device, teachers)
    prepare(task, bn, compiled, device)
    optimizer = build_optimizer(task.models, cfg.optim)
    batch = inputs(images, cfg.data.crop_size, device)

    def step(i: int) -> None:
        if compiled:  # the captured teachers' outputs of the last step may be overwritten now
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(device, cfg.amp):
            logged = task.losses(batch)
        optimizer_step(optimizer, logged, i, cfg.optim.grad_clip)

    for model in task.models:
        model.train()
    start = time.perf_counter()
    for i in range(warmup):  # compile and CUDA-graph recording, cuDNN algorithm search, allocator
        step(i + 1)
    torch.cuda.synchronize(device)
    warmup_s = time.perf_counter() - start
    seconds = []
    for i in range(steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(i + 1 + warmup)
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak_alloc = torch.cuda.max_memory_allocated(device) / 2**30
    peak_reserved = torch.cuda.max_memory_reserved(device) / 2**30
    counter = FlopCounterMode(display=False)
    # Compiled code bypasses the counter's dispatch mode: count an eager step (same MACs).
    with torch.compiler.set_stance("force_eager") if compiled else nullcontext(), counter:
        step(steps + warmup + 1)
    r = {
        "seconds": median(seconds),
        "spread": (min(seconds), max(seconds)),
        "alloc": peak_alloc,
        "reserved": peak_reserved,
        "macs": counter.get_total_flops() // 2,
        "warmup_s": warmup_s,
        "images": 3 * images,
    }  # x_l, u0, u1
    if profile_steps:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(profile_steps):
                step(steps + warmup + 2 + i)
            torch.cuda.synchronize(device)
        events = prof.key_averages()
        kernel_us = sum(
            e.self_device_time_total
            for e in events
            if e.device_type == torch.autograd.DeviceType.CUDA
        )
        r["launches"] = sum(e.count for e in events if e.key in LAUNCHES) / profile_steps
        graph_launches = sum(e.count for e in events if e.key == "cudaGraphLaunch")
        r["graph_launches"] = graph_launches / profile_steps
        r["kernel_ms"] = kernel_us / 1e3 / profile_steps
        print(
            f"  profile {name} x{images} ({bn} BN, compile {'on' if compiled else 'off'}): GPU "
            f"kernel time {r['kernel_ms']:.1f} ms/step of {r['seconds'] * 1e3:.1f} ms wall; "
            f"{r['launches']:.0f} kernel launches + {r['graph_launches']:.0f} CUDA-graph "
            f"launches per step"
        )
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    return r


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument(
        "--runs",
        nargs="+",
        default=[TEACHER_DEEP, TEACHER_WIDE, *STUDENTS],
        choices=[TEACHER_DEEP, TEACHER_WIDE, *STUDENTS],
    )
    p.add_argument(
        "--images",
        nargs="+",
        type=int,
        default=[2, 8],
        choices=[1, 2, 4, 8],
        help="images per device per batch (the VOC total batch is 8)",
    )
    p.add_argument(
        "--steps", type=int, default=10, help="timed steps per run (after the warm-up steps)"
    )
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument(
        "--bn",
        nargs="+",
        default=["calls"],
        choices=IMPLS,
        help="BN statistics: per named batch by one native call each ('calls', the "
        "eager engine's) or in one pass ('one_pass', the compiled engine's); "
        "'joint': one BN call over the whole batch (not the paper's)",
    )
    p.add_argument(
        "--compile",
        nargs="+",
        default=["off"],
        choices=["off", "on"],
        help="'on': trained networks compiled, frozen teachers captured (CUDA graphs)",
    )
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile, capture)")
    p.add_argument(
        "--profile", type=int, default=0, help="profile this many extra steps of each run"
    )
    return p


def main(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py measures GPU memory and needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"machine: {machine()}")
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(device)
    context_gib = (
        total - free
    ) / 2**30  # before any tensor: the CUDA context and the driver's share
    print(
        f"GPU memory {total / 2**30:.1f} GiB; in use before any tensor (CUDA context): "
        f"{context_gib:.2f} GiB"
    )
    mm = matmul_call(args.matmul_size, device, torch.bfloat16)
    mm_times = []
    for _ in range(5):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        mm()
        torch.cuda.synchronize(device)
        mm_times.append(time.perf_counter() - start)
    rate = matmul_macs(args.matmul_size) / median(mm_times[1:])
    print(f"reference: {args.matmul_size}^2 bf16 matmul {2 * rate / 1e12:.0f} TFLOP/s")
    variants = [
        (n, i, b, c) for n in args.runs for i in args.images for b in args.bn for c in args.compile
    ]
    today = {}  # (run, images) -> ms/step of the engine before issue 22: "calls", compile off
    with tempfile.TemporaryDirectory() as folder:
        teachers = teacher_files(folder)
        rows = []
        for name, images, bn, compiled in variants:
            run = name.removeprefix("deeplabv3plus_")
            try:
                r = measure(
                    name,
                    images,
                    args.steps,
                    device,
                    teachers,
                    bn,
                    compiled == "on",
                    args.profile,
                    args.warmup,
                )
            except torch.cuda.OutOfMemoryError as err:
                rows.append([run, images, bn, compiled, "OOM", str(err)[:40]])
                continue
            except Exception as err:  # a failed compile costs its row, not the lent machine's run
                reason = f"{type(err).__name__}: {err}"[:80]
                rows.append([run, images, bn, compiled, "failed", reason])
                print(f"  {rows[-1]}", flush=True)
                continue
            ms = r["seconds"] * 1e3
            if (bn, compiled) == ("calls", "off"):
                today[(run, images)] = ms
            fits = r["reserved"] + context_gib <= A10G_USABLE_GIB
            launches = (
                f"{r['launches']:.0f} + {r['graph_launches']:.0f}" if "launches" in r else "-"
            )
            rows.append(
                [
                    run,
                    images,
                    bn,
                    compiled,
                    round(ms, 1),
                    f"{r['spread'][0] * 1e3:.0f}-{r['spread'][1] * 1e3:.0f}",
                    round(ms / today[(run, images)], 2) if (run, images) in today else "-",
                    round(r["warmup_s"], 1),
                    round(r["images"] / r["seconds"], 1),
                    round(r["alloc"], 2),
                    round(r["reserved"], 2),
                    round(r["macs"] / 1e9, 1),
                    round(r["macs"] / r["seconds"] / rate, 3),
                    launches,
                    round(r["kernel_ms"], 1) if "kernel_ms" in r else "-",
                    "yes" if fits else "no",
                ]
            )
            print(f"  {rows[-1]}", flush=True)
    print("\nVOC 1/8, crop 512, bf16 autocast + channels_last, one GPU (a run's share per device)")
    print(
        table(
            [
                "run",
                "images/device",
                "BN statistics",
                "compile",
                "ms/step (median)",
                "min-max ms",
                "x calls/off",
                "warm-up s",
                "images/s",
                "peak alloc GiB",
                "peak reserved GiB",
                "GMACs/step",
                "utilisation (/bf16 matmul)",
                "launches/step (kernels + graphs)",
                "GPU kernel ms/step",
                "fits 24 GB A10G",
            ],
            rows,
        )
    )
    print("images/s counts every image an iteration consumes: labeled + 2 unlabeled per slot.")
    print(
        "x calls/off: over the same run's ms/step with per-call BN and no compile (the engine "
        "before issue 22), when measured earlier in this run."
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
