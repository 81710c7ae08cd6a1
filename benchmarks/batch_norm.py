"""Per-batch BN statistics (batch_groups) by implementation, all in one process:

1. Time (interleaved rounds, medians): a frozen train-mode ResNet-101 teacher's forward over 4
   named batches (u0, u1, x_l, x_m), as `teacher_forward` runs it, with eval-mode BN (the
   reference), then train-mode BN per named batch by one native BN call per group ("calls"), by one
   reduction and one scale-and-shift ("one_pass"), and by one joint BN call over the 4 batches
   ("joint": not the paper's statistics); and a ResNet-18 student's forward + backward over 2 named
   batches (x_m, x_l) with "calls", "one_pass" and "joint".
2. `--kernels`: kernels per BN layer, the cost of a launch-bound GPU step, counted on any device:
   eager, the compute ops dispatched by one BN layer (each one kernel launch on CUDA); compiled,
   the kernels inductor generates for a 2-BN net (its C++ kernels on CPU stand for its Triton
   kernels on CUDA: the same fusion decisions).

    python benchmarks/batch_norm.py                       # crop 64, 2 images per named batch
    python benchmarks/batch_norm.py --crop-size 128 --rounds 9
    python benchmarks/batch_norm.py --kernels

On CUDA the forwards run as the engine runs them there (bf16 autocast, channels_last); the GPU's
whole-step figures (launch counts, captured teachers) are benchmarks/gpu_step.py's.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from common import arg_parser, interleaved, machine, median, table
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mgd_ray.engine.batch_groups import IMPLS, batch_groups
from mgd_ray.engine.device import autocast, channels_last, to_device
from mgd_ray.engine.targets import freeze
from mgd_ray.models import build_model


def images(count: int, per_batch: int, crop: int, device: torch.device) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(per_batch, 3, crop, crop, generator=g) + i for i in range(count)])
    return to_device(x, device, image=True)


def teacher_variants(args, device: torch.device) -> dict[str, callable]:
    torch.manual_seed(0)
    teacher = channels_last(build_model("deeplabv3plus_resnet101", 21).to(device), device)
    x = images(4, args.images, args.crop_size, device)

    def forward(impl: str | None):
        def run():
            freeze(teacher, train_mode=impl is not None)
            with torch.no_grad(), autocast(device, True):
                with batch_groups(teacher, 4, impl=impl or "calls"):
                    return teacher(x)["logits"]

        return run

    return {
        "teacher R101, eval BN": forward(None),
        **{f"teacher R101, {impl}": forward(impl) for impl in IMPLS},
    }


def student_variants(args, device: torch.device) -> dict[str, callable]:
    torch.manual_seed(0)
    student = channels_last(build_model("deeplabv3plus_resnet18", 21).to(device), device).train()
    x = images(2, args.images, args.crop_size, device)

    def step(impl: str):
        def run():
            with autocast(device, True), batch_groups(student, 2, impl=impl):
                out = student(x)
            (out["logits"].float().square().mean() + out["features"].float().mean()).backward()
            student.zero_grad(set_to_none=True)

        return run

    return {f"student R18 fwd+bwd, {impl}": step(impl) for impl in IMPLS}


class ComputeOps(TorchDispatchMode):
    """Counts the dispatched ops that compute (views, metadata and allocations excluded)."""

    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if (
            not func.is_view
            and isinstance(out, (torch.Tensor, list, tuple))
            and name not in ("detach", "empty", "empty_like", "empty_strided")
        ):
            self.ops[name] += 1
        return out


def eager_ops(impl: str, groups: int, grad: bool, dtype: torch.dtype) -> Counter:
    """Compute ops of one BN layer (8 channels) on 2 images per group: a frozen teacher's (no
    grad, momentum 0) or a student's (forward + backward, momentum 0.1)."""
    bn = nn.BatchNorm2d(8, momentum=0.1 if grad else 0.0)
    x = torch.randn(2 * groups, 8, 6, 6, dtype=dtype, requires_grad=grad)
    seed = torch.ones_like(x)
    counter = ComputeOps()
    with batch_groups(bn, groups, impl=impl), torch.set_grad_enabled(grad), counter:
        out = bn(x)
        if grad:
            out.backward(seed)
    return counter.ops


def compiled_kernels(impl: str, grad: bool) -> int:
    """Kernels inductor generates for conv-BN-ReLU x 2 inside batch_groups(net, 4)."""
    import torch._inductor.metrics as metrics

    torch._dynamo.reset()
    metrics.reset()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
    )
    if not grad:
        freeze(net, train_mode=True)
    compiled = torch.compile(net)
    with batch_groups(net, 4, impl=impl), torch.set_grad_enabled(grad):
        out = compiled(torch.randn(8, 3, 16, 16))
        if grad:
            out.sum().backward()
    return metrics.generated_kernel_count


def print_kernels() -> None:
    rows = []
    for label, groups, grad in (
        ("teacher, no grad, 4 groups", 4, False),
        ("student, forward + backward, 2 groups", 2, True),
    ):
        for impl in IMPLS:
            fp32, bf16 = (
                eager_ops(impl, groups, grad, dtype) for dtype in (torch.float32, torch.bfloat16)
            )
            rows.append(
                [
                    label,
                    impl,
                    sum(fp32.values()),
                    sum(bf16.values()),
                    " ".join(f"{k} {v}" for k, v in sorted(fp32.items())),
                    compiled_kernels(impl, grad),
                ]
            )
    print(
        table(
            [
                "BN layer",
                "impl",
                "eager ops fp32",
                "eager ops bf16 input",
                "eager ops (fp32)",
                "compiled kernels, 2-BN net",
            ],
            rows,
        )
    )


def get_args_parser() -> argparse.ArgumentParser:
    p = arg_parser(__doc__)
    p.add_argument("--crop-size", type=int, default=64)
    p.add_argument("--images", type=int, default=2, help="images per named batch")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    p.add_argument(
        "--kernels", action="store_true", help="count kernels per BN layer instead of timing"
    )
    return p


def main(args: argparse.Namespace) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    if args.kernels:
        print_kernels()
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    variants = {**teacher_variants(args, device), **student_variants(args, device)}
    times = interleaved(variants, args.rounds, device, warmup=1)
    rows = []
    references = {"teacher": "teacher R101, eval BN", "student": "student R18 fwd+bwd, joint"}
    for part, reference in references.items():
        base = median(times[reference])
        for name, seconds in times.items():
            if name.startswith(part):
                spread = f"{min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f}"
                rows.append(
                    [
                        name,
                        median(seconds) * 1e3,
                        spread,
                        median(seconds) / base,
                        reference.split(", ")[-1],
                    ]
                )
    print(
        f"\ncrop {args.crop_size}, {args.images} images per named batch, {device.type}, "
        f"median of {args.rounds} interleaved rounds"
    )
    print(table(["variant", "ms (median)", "min-max ms", "ratio", "ratio over"], rows))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
