"""A run's data, as the loop consumes it: the labeled, unlabeled and val loaders, endless batch
streams over them, one iteration's inputs (with its CutMix mask) and the throughput of a window."""
from __future__ import annotations

import time
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..config import DataConfig
from ..data import cutmix_mask
from . import seeds
from .context import RunContext, world_size
from .device import to_device


def build_loaders(data, cfg: DataConfig, ctx: RunContext, unlabeled_factor: int = 2):
    """(labeled, unlabeled, val) loaders through ctx.prepare_loader: labeled batches of B, unlabeled
    batches of unlabeled_factor * B (split into u0, u1 by the step), val batches of one full image."""
    def loader(dataset: Dataset, batch: int, name: str, train: bool) -> DataLoader:
        if train and len(dataset) < batch * world_size():
            raise ValueError(f"{name} set has {len(dataset)} images, fewer than one batch of {batch} per "
                             f"worker x {world_size()} workers: lower DataConfig.batch_size")
        generator = torch.Generator().manual_seed(seeds.loader_shuffle(cfg.seed))
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
