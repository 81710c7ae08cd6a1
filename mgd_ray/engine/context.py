"""What a training loop needs from whoever runs it: device, ranks, reporting and checkpoints.

The engine's loops take a `RunContext` and never ask who is behind it. `LocalContext` runs in one
process (the debugging runner and the tests); the Ray Train worker loop provides its own
(`mgd_ray.distributed.trial.RayContext`) that wraps `prepare_model`, `ray.train.report` and
`ray.train.get_checkpoint`. Data is the engine's own business: it shards its loaders by rank itself
(engine/batches.py), so that the stream is the same whoever runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks in place (a no-op in one process) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


class RunContext(Protocol):
    """What the engine calls, and nothing else, about the process it runs in."""

    device: torch.device

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move to the device (and wrap in DDP when distributed)."""
        ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        """Publish metrics (already reduced over ranks); every rank calls it, rank 0 may pass a
        checkpoint directory whose contents are kept as the run's latest checkpoint."""
        ...

    def latest_checkpoint(self) -> str | None:
        """A local directory holding the checkpoint to resume from, or None for a fresh start."""
        ...


@dataclass
class LocalContext:
    """One process, one device. Checkpoints go to `output_dir/checkpoint` (replaced atomically),
    metrics to `output_dir/metrics.jsonl` and, when `verbose`, to stdout."""

    output_dir: str
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    verbose: bool = True
    on_report: Callable[[dict[str, Any]], None] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        record = {"time": time.time(), **metrics}
        self.history.append(record)
        with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        if checkpoint_dir is not None:
            final = os.path.join(self.output_dir, "checkpoint")
            staging = final + ".tmp"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(checkpoint_dir, staging)
            old = final + ".old"
            if os.path.exists(final):
                os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        if self.verbose:
            shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in metrics.items()}
            print(f"[report] {shown}", flush=True)
        if self.on_report is not None:
            self.on_report(metrics)

    def latest_checkpoint(self) -> str | None:
        path = os.path.join(self.output_dir, "checkpoint")
        return path if os.path.isdir(path) else None
