"""What running on a GPU changes in the engine: bf16 autocast, channels_last memory layout and
compiled (on CUDA: captured) forwards. On the CPU all are off by default (they buy nothing there),
so every caller can use them unconditionally."""

from __future__ import annotations

import warnings
from contextlib import nullcontext

import torch
from torch import nn


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled (no loss scaling needed for bf16); fp32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def step_begin(device: torch.device) -> None:
    """Start a step: on CUDA, a captured (CUDA-graph) teacher's outputs live until the next
    replay, so each iteration tells the graphs that a new one begins."""
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()


def to_device(x: torch.Tensor, device: torch.device, image: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    # channels_last speeds up cuDNN convolutions under autocast; on CPU it buys nothing here.
    return (
        x.contiguous(memory_format=torch.channels_last) if image and device.type == "cuda" else x
    )


def channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` in channels_last layout when it will run on CUDA (to match to_device's images)."""
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def compile_for_device(
    module: nn.Module,
    device: torch.device,
    enabled: bool | None = None,
    frozen: bool = False,
    backend: str = "inductor",
) -> nn.Module:
    """`module`, its forward compiled in place (`nn.Module.compile`: same object, same state_dict
    keys) when `enabled` (a config's `compile`: None = on CUDA only; True forces it, e.g. on CPU in
    tests; False = off). Pass the network itself, before any DDP wrapping: dynamo starts no trace
    in torch's own modules, so a DDP wrapper (or a bare nn.Sequential) compiled in place would run
    eagerly down to the first forward defined outside torch. Under DDP the gradients are then
    all-reduced after the compiled backward rather than bucket by bucket during it.

    `frozen`: a no-grad teacher that writes no state (`freeze(train_mode=True)`: its BNs have
    momentum 0, so batch_groups writes nothing). On CUDA its forward is captured in CUDA graphs
    (mode="reduce-overhead"): one graph launch for thousands of kernels. Call
    `torch.compiler.cudagraph_mark_step_begin()` at the start of each step and use its outputs
    within the step: the next replay overwrites them. Otherwise (a trained model, or any CPU
    model) the default mode: inductor fuses BN, activations and losses into fewer kernels. Under
    compile, batch_groups takes its one-pass BN, which inductor fuses (see default_impl).
    """
    if not (device.type == "cuda" if enabled is None else enabled):
        return module
    graphs = frozen and device.type == "cuda" and backend == "inductor"
    if graphs and _cuda_graph_launch_regressed(torch.__version__):
        warnings.warn(
            f"torch {torch.__version__}: CUDA-graph replay (mode='reduce-overhead') "
            "was reported up to 7x slower on H100 than in torch 2.9 "
            "(pytorch/pytorch#174575); benchmarks/gpu_step.py --compile off on "
            "measures whether capture still pays",
            RuntimeWarning,
            stacklevel=2,
        )
    module.compile(backend=backend, mode="reduce-overhead" if graphs else None)
    return module


def _cuda_graph_launch_regressed(version: str) -> bool:
    """The torch releases pytorch/pytorch#174575 reports a slower cudaGraphLaunch for (2.10 vs
    2.9, H100). Only a warning: the reporter also blames the CUDA 13 toolkit (a build tag that no
    version range can exclude), the cause was not confirmed in the thread, and capture may still
    pay for a launch-bound step; gpu_step.py's compile on/off rows decide on the installed
    version."""
    return version.startswith("2.10.")
