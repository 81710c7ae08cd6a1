"""What teacher training and distillation share: loaders, the endless batch streams, autocast,
divergence checks, running means of the logged terms, and the report + checkpoint call."""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..data import cutmix_mask
from .checkpoint import atomic_save, load_checkpoint, set_rng_state
from .context import RunContext, all_reduce_sum, is_main_process, world_size
from .optim import clip_gradients


class DivergedError(RuntimeError):
    """The total loss became NaN or infinite: the run stops instead of training on garbage."""


def check_finite(loss: float, iteration: int, terms: dict[str, float] | None = None) -> None:
    if not math.isfinite(loss):
        detail = ", ".join(f"{k}={v:.4g}" for k, v in (terms or {}).items())
        raise DivergedError(f"diverged at iteration {iteration}: loss={loss}" + (f" ({detail})" if detail else ""))


def build_loaders(data, cfg: DataConfig, ctx: RunContext, unlabeled_factor: int = 2):
    """(labeled, unlabeled, val) loaders through ctx.prepare_loader: labeled batches of B, unlabeled
    batches of unlabeled_factor * B (split into u0, u1 by the step), val batches of one full image."""
    def loader(dataset: Dataset, batch: int, name: str, train: bool) -> DataLoader:
        if train and len(dataset) < batch * world_size():
            raise ValueError(f"{name} set has {len(dataset)} images, fewer than one batch of {batch} per "
                             f"worker x {world_size()} workers: lower DataConfig.batch_size")
        generator = torch.Generator().manual_seed(cfg.seed)
        return ctx.prepare_loader(DataLoader(
            dataset, batch_size=batch, shuffle=train, drop_last=train, generator=generator,
            num_workers=cfg.num_workers if train else min(cfg.num_workers, 1),
            persistent_workers=train and cfg.num_workers > 0, pin_memory=ctx.device.type == "cuda"))
    return (loader(data.labeled, cfg.batch_size, "labeled", True),
            loader(data.unlabeled, unlabeled_factor * cfg.batch_size, "unlabeled", True),
            loader(data.val, 1, "val", False))


class BatchStream:
    """Endless batches from a loader: a new epoch (set_epoch on a distributed sampler, so shards
    reshuffle) each time it runs out; counts the seconds spent waiting for the next batch."""

    def __init__(self, loader: DataLoader, epoch: int = 0) -> None:
        self.loader, self.epoch = loader, epoch
        self.wait_s = 0.0
        self._iter: Iterator | None = None

    def _start_epoch(self) -> None:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        self._iter = iter(self.loader)

    def next(self) -> Any:
        start = time.perf_counter()
        if self._iter is None:
            self._start_epoch()
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch += 1
            self._start_epoch()
            batch = next(self._iter)
        self.wait_s += time.perf_counter() - start
        return batch


class Batches:
    """A run's labeled and unlabeled streams and val loader, with the throughput of the current
    report window (iterations per second and the share of time spent waiting for data)."""

    def __init__(self, data, cfg: DataConfig, ctx: RunContext, epoch: int = 0) -> None:
        labeled, unlabeled, self.val_loader = build_loaders(data, cfg, ctx)
        self.labeled, self.unlabeled = BatchStream(labeled, epoch), BatchStream(unlabeled, epoch)
        self._start_window()

    @property
    def epoch(self) -> int:
        return self.unlabeled.epoch

    def _start_window(self) -> None:
        self._start, self._iters = time.perf_counter(), 0
        self._wait = self.labeled.wait_s + self.unlabeled.wait_s

    def next_inputs(self, device: torch.device, mask_gen: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One iteration's inputs: the labeled batch x_l (B x 3 x S x S) and y (B x S x S), the
        unlabeled batch split into u0 and u1 (B x 3 x S x S each), and the CutMix mask M (B x S x S)."""
        x_l, y = self.labeled.next()
        u = self.unlabeled.next()
        x_l, y, u = to_device(x_l, device, True), to_device(y, device), to_device(u, device, True)
        u0, u1 = u.chunk(2)
        mask = cutmix_mask(u0.shape[0], u0.shape[-2], u0.shape[-1], generator=mask_gen).to(device)
        self._iters += 1
        return x_l, y, u0, u1, mask

    def read_window(self) -> dict[str, float]:
        """{"iter_per_s", "data_wait_share"} since the last read; starts a new window."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        wait = self.labeled.wait_s + self.unlabeled.wait_s - self._wait
        window = {"iter_per_s": self._iters / elapsed, "data_wait_share": min(max(wait / elapsed, 0.0), 1.0)}
        self._start_window()
        return window


def optimizer_step(optimizer: torch.optim.Optimizer, total: torch.Tensor, logged: dict[str, torch.Tensor],
                   iteration: int, grad_clip: float | None) -> dict[str, float]:
    """Backward and step on `total`, after one host read of the logged scalars ("loss" first).

    The read is also the divergence check, done before the step so non-finite gradients never
    reach the weights. The values are averaged over ranks first: every rank must take the same
    decision, or the ranks that carry on would wait forever in DDP's gradient all-reduce."""
    names = list(logged)
    values = torch.stack([logged[n].detach().float() for n in names])
    values = dict(zip(names, (all_reduce_sum(values) / world_size()).tolist()))
    check_finite(values["loss"], iteration, {n: v for n, v in values.items() if n.startswith("loss_")})
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    clip_gradients(optimizer, grad_clip)
    optimizer.step()
    return values


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled (no loss scaling needed for bf16); fp32 elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def to_device(x: torch.Tensor, device: torch.device, image: bool = False) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    # channels_last speeds up cuDNN convolutions under autocast; on CPU it buys nothing here.
    return x.contiguous(memory_format=torch.channels_last) if image and device.type == "cuda" else x


class RunningMeans:
    """Means of logged scalars since the last report, summed over ranks at read time."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1

    def read(self, device: torch.device) -> dict[str, float]:
        keys = sorted(self.sums)
        packed = torch.tensor([self.sums[k] for k in keys] + [float(self.count)], dtype=torch.float64, device=device)
        packed = all_reduce_sum(packed).cpu()
        count = max(packed[-1].item(), 1.0)
        self.sums, self.count = {}, 0
        return {k: packed[i].item() / count for i, k in enumerate(keys)}


def report_with_checkpoint(ctx: RunContext, metrics: dict[str, Any],
                           build_state: Callable[[], tuple[dict, dict]]) -> None:
    """Every rank calls ctx.report; rank 0 writes state.pt (optimizer, counters, RNG: what resuming
    needs beside the weights) and model.pt (the plain model state dict, stored once) into a fresh
    temporary folder, passes it along, and removes it once the context has kept a copy."""
    if not is_main_process():
        ctx.report(metrics, None)
        return
    folder = tempfile.mkdtemp(prefix="mgd-ckpt-")
    try:
        state, model_state = build_state()
        atomic_save(state, os.path.join(folder, "state.pt"))
        atomic_save(model_state, os.path.join(folder, "model.pt"))
        ctx.report(metrics, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def resume(ctx: RunContext, optimizer: torch.optim.Optimizer, mask_gen: torch.Generator,
           load_models: Callable[[dict, str], None]) -> tuple[int, int]:
    """Restore a run from ctx.latest_checkpoint(): models (through `load_models(state, folder)`,
    which reads them from state.pt's entries or from the folder's model.pt), optimizer, CutMix and
    global RNG states. Returns (iteration, epoch) to continue from; (0, 0) when fresh."""
    folder = ctx.latest_checkpoint()
    if folder is None:
        return 0, 0
    path = os.path.join(folder, "state.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint folder {folder}: no state.pt to resume from")
    state = load_checkpoint(path)
    load_models(state, folder)
    optimizer.load_state_dict(state["optimizer"])
    mask_gen.set_state(state["cutmix_rng"])
    set_rng_state(state["rng"])
    return int(state["iteration"]), int(state["epoch"])
