"""A run's data, as the loop consumes it: one item per iteration from a stream that is a pure
function of the data (DataConfig: dataset, split, seed, batch size, crop), the world size, the rank
and the iteration; the CutMix mask of an iteration; the sharded val loader; the throughput of a
report window.

Why a pure function: every trial of a protocol, a resumed run, a run with other loader workers and
a teacher-target writer (engine/target_store.py) must see the same batches at iteration t, so that
teacher outputs computed once serve them all and a resumed run replays what an uninterrupted one
would have seen. Nothing in the stream depends on generator state carried from one iteration to the
next, on torch's global generator, on the DataLoader's worker seeding or on the trial's seed:

- images: each role (labeled: B per rank, unlabeled: 2B per rank, split into u0 and u1) is read
  in epochs of floor(N / (n * W)) iterations (n images per rank, W ranks; the last partial global
  batch is dropped); epoch e is a permutation of the set seeded by (data seed, role, e), and at
  iteration t = e * per_epoch + k, rank r takes the permutation's positions
  [(k * W + r) * n, (k * W + r + 1) * n);
- augmentation: image `slot` of that batch draws its scale, flip and crop from a generator seeded
  by (data seed, role, t, rank, slot).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from ..config import DataConfig
from ..data import cutmix_mask
from . import seeds
from .context import rank, world_size
from .device import to_device

if TYPE_CHECKING:
    from .targets import Targets

# What the stream yields for a (DataConfig, world size, rank, iteration) is fixed by this code:
# change the version with the stream (order, augmentation, CutMix), so that stored teacher targets
# written from the old stream are refused rather than paired with other images.
STREAM_VERSION = "stream-v1"
UNLABELED_FACTOR = 2  # unlabeled images per labeled one: u0 and u1


def iterations_per_epoch(num_images: int, per_rank: int, world: int, name: str) -> int:
    """Whole global batches (per_rank x world images) in a set of num_images: one epoch."""
    per_epoch = num_images // (per_rank * world)
    if per_epoch < 1:
        raise ValueError(
            f"{name} set has {num_images} images, fewer than one batch of {per_rank} "
            f"per worker x {world} workers: lower DataConfig.batch_size"
        )
    return per_epoch


def cutmix_mask_at(seed: int, n: int, height: int, width: int) -> torch.Tensor:
    """The n x H x W CutMix mask drawn from a generator seeded by `seed` (a named stream of the
    run's seed, rank and iteration: engine/seeds.py)."""
    return cutmix_mask(n, height, width, generator=torch.Generator().manual_seed(seed))


@dataclass(frozen=True)
class Batch:
    """One iteration's inputs on the device: what a task's `losses` takes."""

    x_l: torch.Tensor  # B x 3 x S x S labeled images
    y: torch.Tensor  # B x S x S their labels
    u0: torch.Tensor  # B x 3 x S x S unlabeled images, mixed by the mask into x_m
    u1: torch.Tensor
    mask: torch.Tensor  # B x S x S binary CutMix mask
    targets: Targets | None = None  # the iteration's stored teacher targets (a store's run)


class IterationData(Dataset):
    """Item t: this rank's inputs of iteration t, {"iteration": t, "x_l": B x 3 x S x S,
    "y": B x S x S int64, "u": 2B x 3 x S x S}, plus "targets": `stored_targets(t)` when given
    (a store's teacher targets, read here so that the loader's workers overlap reading with
    compute).

    `labeled` and `unlabeled` must offer `load(index, generator)`, as SegmentationDataset does."""

    def __init__(
        self,
        labeled: Dataset,
        unlabeled: Dataset,
        cfg: DataConfig,
        world: int,
        rank: int,
        stored_targets: Callable[[int], Targets] | None = None,
    ) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.cfg, self.world, self.rank = cfg, world, rank
        self.stored_targets = stored_targets
        batch = cfg.batch_size
        self.roles = {
            "labeled": (labeled, batch),
            "unlabeled": (unlabeled, UNLABELED_FACTOR * batch),
        }
        self.per_epoch = {
            role: iterations_per_epoch(len(dataset), n, world, role)
            for role, (dataset, n) in self.roles.items()
        }
        self._orders: dict[str, tuple[int, torch.Tensor]] = {}  # role -> (epoch, permutation)

    def indices(self, role: str, iteration: int) -> list[int]:
        """The dataset indices of this rank's `role` batch in `iteration`."""
        dataset, n = self.roles[role]
        epoch, k = divmod(iteration, self.per_epoch[role])
        cached = self._orders.get(role)
        if cached is None or cached[0] != epoch:
            generator = torch.Generator().manual_seed(seeds.data_order(self.cfg.seed, role, epoch))
            order = torch.randperm(len(dataset), generator=generator)
            cached = self._orders[role] = (epoch, order)
        first = (k * self.world + self.rank) * n
        return cached[1][first : first + n].tolist()

    def _load(self, role: str, iteration: int) -> list:
        dataset, _ = self.roles[role]
        return [
            dataset.load(
                index,
                torch.Generator().manual_seed(
                    seeds.augmentation(self.cfg.seed, role, iteration, self.rank, slot)
                ),
            )
            for slot, index in enumerate(self.indices(role, iteration))
        ]

    def __getitem__(self, iteration: int) -> dict[str, Any]:
        labeled = self._load("labeled", iteration)
        item = {
            "iteration": iteration,
            "x_l": torch.stack([image for image, _ in labeled]),
            "y": torch.stack([label for _, label in labeled]),
            "u": torch.stack(self._load("unlabeled", iteration)),
        }
        if self.stored_targets is not None:
            item["targets"] = self.stored_targets(iteration)
        return item


def unpack(item: dict[str, Any], device: torch.device) -> tuple[int, torch.Tensor, ...]:
    """(iteration, x_l, y, u0, u1) of an IterationData item, the tensors on `device`."""
    x_l, y = to_device(item["x_l"], device, True), to_device(item["y"], device)
    u0, u1 = to_device(item["u"], device, True).chunk(2)
    return item["iteration"], x_l, y, u0, u1


def iteration_loader(
    items: IterationData, iterations: range, num_workers: int, device: torch.device
) -> DataLoader:
    """Items `iterations` in order, prefetched by `num_workers` processes (0: in this one)."""
    return DataLoader(
        items,
        batch_size=None,
        sampler=iterations,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )


def val_loader(val: Dataset, cfg: DataConfig, device: torch.device) -> DataLoader:
    """Full-resolution val images one at a time; rank r takes every W-th image from r, so that the
    confusion matrices summed over the ranks count every image exactly once (a DistributedSampler
    would pad the set with repeated images to give every rank an equal share)."""
    shard = Subset(val, range(rank(), len(val), world_size())) if world_size() > 1 else val
    return DataLoader(
        shard,
        batch_size=1,
        shuffle=False,
        num_workers=min(cfg.num_workers, 1),
        pin_memory=device.type == "cuda",
    )


class Batches:
    """A run's training items from iteration `start` to `stop` and its val loader, with the
    throughput of the current report window (iterations per second and the share of time spent
    waiting for data)."""

    def __init__(
        self,
        data,
        cfg: DataConfig,
        device: torch.device,
        start: int,
        stop: int,
        stored_targets: Callable[[int], Targets] | None = None,
    ) -> None:
        items = IterationData(
            data.labeled, data.unlabeled, cfg, world_size(), rank(), stored_targets
        )
        self.loader = iteration_loader(items, range(start, stop), cfg.num_workers, device)
        self.val_loader = val_loader(data.val, cfg, device)
        self._iter = None
        self.wait_s = 0.0
        self._start_window()

    def _start_window(self) -> None:
        self._start, self._iters, self._wait = time.perf_counter(), 0, self.wait_s

    def next_batch(self, device: torch.device, iteration: int, mask_seed: int) -> Batch:
        """The Batch of `iteration` on `device`, its CutMix mask drawn from `mask_seed`."""
        start = time.perf_counter()
        if self._iter is None:
            self._iter = iter(self.loader)
        item = next(self._iter)
        self.wait_s += time.perf_counter() - start
        t, x_l, y, u0, u1 = unpack(item, device)
        if t != iteration:
            raise RuntimeError(f"data stream out of step: expected iteration {iteration}")
        mask = cutmix_mask_at(mask_seed, u0.shape[0], u0.shape[-2], u0.shape[-1]).to(device)
        self._iters += 1
        targets = item.get("targets")
        return Batch(x_l, y, u0, u1, mask, None if targets is None else targets.to(device))

    def read_window(self) -> dict[str, float]:
        """{"iter_per_s", "data_wait_share"} since the last read; starts a new window."""
        elapsed = max(time.perf_counter() - self._start, 1e-9)
        wait = self.wait_s - self._wait
        window = {
            "iter_per_s": self._iters / elapsed,
            "data_wait_share": min(max(wait / elapsed, 0.0), 1.0),
        }
        self._start_window()
        return window
