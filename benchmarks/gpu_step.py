"""One training iteration of every run a VOC study makes, at the paper's crop (512), on one GPU:
step time, images/s, peak GPU memory and bf16 utilisation, per images-per-device.

Runs: the CPS teacher runs (two branches of ResNet-101 / WRN-50-2) and the MGD student runs
(ResNet-18 / MobileNetV2 from both frozen teachers, train-mode teacher BN as the paper). Each is the
engine's own task (CPSTask / MGDTask) with the VOC preset's config (21 classes, lr, OHEM setting,
bf16 autocast and channels_last as the engine runs on CUDA), stepped by the loop's own
`optimizer_step` (the host read that is the divergence check, backward, SGD). Inputs are random
tensors of the crop size already on the GPU (data loading is benchmarks/data_pipeline.py); teachers
and students have random weights (speed and memory do not depend on them).

Images per device: 2 is the official recipe (total batch 8 over 4 GPUs), 8 the whole batch on one
GPU. Peak memory is torch's max_memory_allocated / max_memory_reserved over warm-up and timed steps;
the CUDA context (not counted by torch) is printed once. "fits 24 GB" compares reserved + context
with an A10G's 24 GB (22.0 GiB usable after the driver's share). Utilisation is the step's
multiply-accumulates (torch.utils.flop_counter: convolutions and matrix products) per second over
the rate of a bf16 n x n matmul timed in the same process.

    python benchmarks/gpu_step.py                    # both teachers, both students, 2 and 8 images
    python benchmarks/gpu_step.py --images 2 --steps 5
"""
from __future__ import annotations

import argparse
import tempfile
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from common import machine, matmul_call, matmul_macs, median, table
from mgd_ray.config import (STUDENTS, TEACHER_DEEP, TEACHER_WIDE, DataConfig, DistillConfig, TeacherConfig)
from mgd_ray.data import cutmix_mask
from mgd_ray.engine import batch_groups as batch_groups_module
from mgd_ray.engine.checkpoint import atomic_save
from mgd_ray.engine.context import LocalContext
from mgd_ray.engine.device import autocast, to_device
from mgd_ray.engine.distill import MGDTask
from mgd_ray.engine.loop import optimizer_step
from mgd_ray.engine.optim import build_optimizer
from mgd_ray.engine.presets import load_preset, preset_optim
from mgd_ray.engine.teacher import CPSTask
from mgd_ray.models import build_model

NUM_CLASSES = 21  # VOC
A10G_USABLE_GIB = 22.0


def inputs(images: int, crop: int, device: torch.device, seed: int = 0):
    """x_l, y, u0, u1, mask as the loop hands them to a task (images on the device, channels_last)."""
    g = torch.Generator().manual_seed(seed)
    x_l, u0, u1 = (to_device(torch.randn(images, 3, crop, crop, generator=g), device, True) for _ in range(3))
    y = torch.randint(0, NUM_CLASSES, (images, crop, crop), generator=g)
    y[:, :8] = 255  # some ignored pixels, as VOC's borders
    return x_l, to_device(y, device), u0, u1, cutmix_mask(images, crop, crop, g).to(device)


def teacher_files(folder: str) -> dict[str, str]:
    paths = {}
    for key, arch in (("teacher_deep_checkpoint", TEACHER_DEEP), ("teacher_wide_checkpoint", TEACHER_WIDE)):
        paths[key] = f"{folder}/{arch}.pt"
        atomic_save(build_model(arch, NUM_CLASSES).state_dict(), paths[key])
    return paths


def build_run(name: str, images: int, device: torch.device, teachers: dict[str, str]):
    """(task, cfg) of one run of a VOC 1/8 study with `images` per device."""
    student = name if name in STUDENTS else STUDENTS[0]
    preset = load_preset("voc", "1/8", student, num_devices=8 // images)
    data = DataConfig(dataset="voc", root="/nonexistent", crop_size=preset["crop_size"], batch_size=images)
    ctx = LocalContext(tempfile.mkdtemp(prefix="gpu-step-"), device=device, verbose=False)
    if name in STUDENTS:
        cfg = DistillConfig(student=name, weights=preset["weights"], data=data, **teachers,
                            optim=preset_optim(preset, "student", preset["student_iterations"]),
                            ohem=preset["ohem"], iterations=preset["student_iterations"])
        return MGDTask(cfg, SimpleNamespace(num_classes=NUM_CLASSES), ctx), cfg
    cfg = TeacherConfig(arch=name, data=data, optim=preset_optim(preset, "teacher", 1, name),
                        cps_weight=preset["cps_weight"], ohem=preset["ohem"])
    return CPSTask(cfg, SimpleNamespace(num_classes=NUM_CLASSES), ctx), cfg


ENGINE_GROUPED_BN = batch_groups_module.grouped_batch_norm


def joint_batch_norm(bn, x, groups, sync=False):
    """One train-mode BN call over the whole batch (what the step would cost without per-batch
    statistics): the measure of batch_groups' own cost."""
    track = bn.track_running_stats and bn.running_mean is not None
    return F.batch_norm(x, bn.running_mean if track else None, bn.running_var if track else None, bn.weight,
                        bn.bias, True, bn.momentum or 0.1, bn.eps)


def measure(name: str, images: int, steps: int, device: torch.device, teachers: dict[str, str],
            bn: str = "per batch", profile_steps: int = 0) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    batch_groups_module.grouped_batch_norm = ENGINE_GROUPED_BN if bn == "per batch" else joint_batch_norm
    task, cfg = build_run(name, images, device, teachers)
    optimizer = build_optimizer(task.models, cfg.optim)
    batch = inputs(images, cfg.data.crop_size, device)

    def step(i: int) -> None:
        with autocast(device, cfg.amp):
            logged = task.losses(*batch)
        optimizer_step(optimizer, logged, i, cfg.optim.grad_clip)

    for model in task.models:
        model.train()
    for i in range(3):  # warm-up: cuDNN algorithm search, allocator growth
        step(i + 1)
    seconds = []
    for i in range(steps):
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        step(i + 4)
        torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    peak_alloc = torch.cuda.max_memory_allocated(device) / 2**30
    peak_reserved = torch.cuda.max_memory_reserved(device) / 2**30
    counter = FlopCounterMode(display=False)
    with counter:
        step(steps + 4)
    if profile_steps:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(profile_steps):
                step(steps + 5 + i)
            torch.cuda.synchronize(device)
        events = prof.key_averages()
        kernel_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
        launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
        print(f"  profile {name} x{images} ({bn} BN): GPU kernel time {kernel_us / 1e3 / profile_steps:.1f} ms/step "
              f"of {median(seconds) * 1e3:.1f} ms wall; {launches / profile_steps:.0f} kernel launches/step")
        print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    batch_groups_module.grouped_batch_norm = ENGINE_GROUPED_BN
    return {"seconds": median(seconds), "spread": (min(seconds), max(seconds)), "alloc": peak_alloc,
            "reserved": peak_reserved, "macs": counter.get_total_flops() // 2,
            "images": 3 * images}  # x_l, u0, u1


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", default=[TEACHER_DEEP, TEACHER_WIDE, *STUDENTS],
                   choices=[TEACHER_DEEP, TEACHER_WIDE, *STUDENTS])
    p.add_argument("--images", nargs="+", type=int, default=[2, 8], choices=[1, 2, 4, 8],
                   help="images per device per batch (the VOC total batch is 8)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per run (after 3 warm-up steps)")
    p.add_argument("--matmul-size", type=int, default=8192)
    p.add_argument("--bn", nargs="+", default=["per batch"], choices=["per batch", "joint"],
                   help="'joint' also measures each run with one BN call over the whole batch")
    p.add_argument("--profile", type=int, default=0, help="profile this many extra steps of each run")
    return p


def main(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("gpu_step.py measures GPU memory and needs a CUDA device")
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"machine: {machine()}")
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info(device)
    context_gib = (total - free) / 2**30  # before any tensor: the CUDA context and the driver's share
    print(f"GPU memory {total / 2**30:.1f} GiB; in use before any tensor (CUDA context): {context_gib:.2f} GiB")
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
    with tempfile.TemporaryDirectory() as folder:
        teachers = teacher_files(folder)
        rows = []
        for name, images, bn in ((n, i, b) for n in args.runs for i in args.images for b in args.bn):
                try:
                    r = measure(name, images, args.steps, device, teachers, bn, args.profile)
                except torch.cuda.OutOfMemoryError as err:
                    rows.append([name.removeprefix("deeplabv3plus_"), images, bn, "OOM", str(err)[:40]])
                    continue
                step_s = r["seconds"]
                fits = r["reserved"] + context_gib <= A10G_USABLE_GIB
                rows.append([name.removeprefix("deeplabv3plus_"), images, bn, round(step_s * 1e3, 1),
                             f"{r['spread'][0] * 1e3:.0f}-{r['spread'][1] * 1e3:.0f}",
                             round(r["images"] / step_s, 1), round(r["alloc"], 2), round(r["reserved"], 2),
                             round(r["macs"] / 1e9, 1), round(r["macs"] / step_s / rate, 3),
                             "yes" if fits else "no"])
                print(f"  {rows[-1]}", flush=True)
    print("\nVOC 1/8, crop 512, bf16 autocast + channels_last, one GPU (a run's share per device)")
    print(table(["run", "images/device", "BN statistics", "ms/step (median)", "min-max ms", "images/s", "peak alloc GiB",
                 "peak reserved GiB", "GMACs/step", "utilisation (/bf16 matmul)", "fits 24 GB A10G"], rows))
    print("images/s counts every image an iteration consumes: labeled + 2 unlabeled per slot.")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
