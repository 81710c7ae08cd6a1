"""`fit`: the one training loop of the engine, for teacher (CPS) and student (MGD) runs alike.

A run is a `Task` (its models, its losses for one iteration's inputs, its evaluation and its part
of the checkpoint); `fit` owns everything else: the optimizer and the lr of each iteration, the
data stream and CutMix masks, the divergence check, running means of the logged values, and every
cfg.eval_every iterations an evaluation, a report and a checkpoint, and resuming from the last one.
The loop knows nothing of what it trains (as detectron2's `run_step` and torchvision's
`train_one_epoch`).
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from functools import partial
from typing import Any, Callable, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..config import DistillConfig, TeacherConfig
from .batches import Batch, Batches
from .checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from .context import RunContext, all_reduce_sum, is_main_process, world_size
from .device import autocast, step_begin
from .optim import build_optimizer, clip_gradients, lr_at, set_lr


class DivergedError(RuntimeError):
    """The total loss became NaN or infinite: the run stops instead of training on garbage.

    `iteration` (1-based) is the iteration whose losses were not finite and `losses` its
    rank-averaged "loss" and "loss_<term>" values, as the step logged them."""

    def __init__(self, iteration: int, losses: dict[str, float]) -> None:
        self.iteration, self.losses = int(iteration), dict(losses)
        detail = ", ".join(f"{k}={v:.4g}" for k, v in self.losses.items() if k != "loss")
        super().__init__(
            f"diverged at iteration {iteration}: loss={self.losses['loss']}"
            + (f" ({detail})" if detail else "")
        )

    def __reduce__(self):  # pickled across processes (Ray) with its fields, not just its message
        return type(self), (self.iteration, self.losses)


class Task(Protocol):
    """What `fit` trains. The task builds its models (seeded, prepared by the RunContext) before
    `fit` runs; `fit` steps one optimizer over all of `models`."""

    models: list[nn.Module]
    logged: tuple[str, ...]  # the scalars `losses` returns, reported as their running means
    global_seed: int  # this rank's torch global stream (engine/seeds.py)
    # This rank's stored teacher targets of iteration t, read in the loader's workers, or None:
    # a picklable callable t -> Targets (engine/targets.py).
    stored_targets: Callable[[int], Any] | None

    def cutmix_seed(self, iteration: int) -> int:
        """The seed of this rank's CutMix mask of `iteration` (a pure function of the run's seed,
        the rank and the iteration: a resumed run draws the masks of an uninterrupted one)."""
        ...

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Scalars of one iteration: "loss", the total to minimise, and the others of `logged`;
        batch.targets is what stored_targets read for the iteration (None without a store)."""
        ...

    def evaluate(self, val_loader: DataLoader) -> dict[str, Any]:
        """Val metrics: "miou", the run's score, and any others the task reports."""
        ...

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(the task's entries of state.pt, the plain state dict model.pt holds)."""
        ...

    def load_state(self, state: dict[str, Any], folder: str) -> None:
        """Restore the models from a checkpoint folder and its loaded state.pt."""
        ...


def fit(task: Task, cfg: TeacherConfig | DistillConfig, data, ctx: RunContext) -> dict[str, Any]:
    """Train `task` on `data` for cfg.iterations iterations (from ctx's latest checkpoint when
    there is one) and ctx.report every cfg.eval_every iterations and at the end, with a checkpoint.
    Reports "iteration", "miou", the means of task.logged (0.0 when none ran), "lr", the task's
    other evaluation metrics, "iter_per_s", "data_wait_share", "done"; returns the final report."""
    device = ctx.device
    # fixed crop sizes: let cuDNN pick its fastest kernels, as the official train.py
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    optimizer = build_optimizer(task.models, cfg.optim)
    torch.manual_seed(task.global_seed)
    start, final = resume(ctx, task, optimizer)
    # The data and the masks of iteration t are pure functions of t (engine/batches.py), so a
    # resumed run starts the stream at `start` and sees what an uninterrupted run would.
    batches = Batches(data, cfg.data, device, start, cfg.iterations, task.stored_targets)
    meter = RunningMeans()

    def report(metrics: dict[str, Any]) -> dict[str, Any]:
        report_with_checkpoint(ctx, metrics, partial(checkpoint_state, task, optimizer, metrics))
        return metrics

    def evaluate_and_report(iteration: int, lr: float, done: bool) -> dict[str, Any]:
        means = meter.read(device)
        evaluation = task.evaluate(batches.val_loader)
        return report(
            {
                "iteration": iteration,
                "miou": evaluation["miou"],
                **{name: means.get(name, 0.0) for name in task.logged},
                "lr": lr,
                **evaluation,
                **batches.read_window(),
                "done": done,
            }
        )

    # A resumed finished run reports its final metrics once more (those of a checkpoint written
    # before state.pt kept them are measured again).
    if start >= cfg.iterations:
        return report({**final, "done": True}) if final else evaluate_and_report(start, 0.0, True)
    for model in task.models:
        model.train()
    metrics: dict[str, Any] = {}
    for iteration in range(start, cfg.iterations):
        step_begin(device)
        lr = lr_at(cfg.optim, iteration, cfg.iterations)
        set_lr(optimizer, lr)
        batch = batches.next_batch(device, iteration, task.cutmix_seed(iteration))
        with autocast(device, cfg.amp):
            logged = task.losses(batch)
        meter.add(optimizer_step(optimizer, logged, iteration + 1, cfg.optim.grad_clip))
        done = iteration + 1 == cfg.iterations
        if (iteration + 1) % cfg.eval_every == 0 or done:
            metrics = evaluate_and_report(iteration + 1, lr, done)
    return metrics


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    logged: dict[str, torch.Tensor],
    iteration: int,
    grad_clip: float | None,
) -> dict[str, float]:
    """Backward and step on logged["loss"], after one host read of the logged scalars.

    The read is also the divergence check, done before the step so non-finite gradients never
    reach the weights. The values are averaged over ranks first: every rank must take the same
    decision, or the ranks that carry on would wait forever in DDP's gradient all-reduce."""
    names = list(logged)
    values = torch.stack([logged[n].detach().float() for n in names])
    values = dict(zip(names, (all_reduce_sum(values) / world_size()).tolist()))
    if not math.isfinite(values["loss"]):
        raise DivergedError(
            iteration, {n: v for n, v in values.items() if n == "loss" or n.startswith("loss_")}
        )
    optimizer.zero_grad(set_to_none=True)
    logged["loss"].backward()
    clip_gradients(optimizer, grad_clip)
    optimizer.step()
    return values


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
        packed = torch.tensor(
            [self.sums[k] for k in keys] + [float(self.count)], dtype=torch.float64, device=device
        )
        packed = all_reduce_sum(packed).cpu()
        count = max(packed[-1].item(), 1.0)
        self.sums, self.count = {}, 0
        return {k: packed[i].item() / count for i, k in enumerate(keys)}


def checkpoint_state(
    task: Task, optimizer: torch.optim.Optimizer, metrics: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(state.pt, model.pt) of the run at the report `metrics`. state.pt holds what resuming needs
    beside the weights: the task's entries, the iteration, torch's global RNG states, the reported
    metrics and, until the run is done, the optimizer. No data-stream or CutMix state: both are
    pure functions of the iteration. A finished run keeps no optimizer state: nothing resumes its
    training (a longer budget continues it with fresh momentum) and SGD's momentum is as large as
    the weights."""
    entries, model_state = task.state()
    state = {**entries, "iteration": metrics["iteration"], "rng": rng_state(), "metrics": metrics}
    if not metrics["done"]:
        state["optimizer"] = optimizer.state_dict()
    return state, model_state


def report_with_checkpoint(
    ctx: RunContext, metrics: dict[str, Any], build_state: Callable[[], tuple[dict, dict]]
) -> None:
    """Every rank calls ctx.report; rank 0 writes state.pt and model.pt (the plain model state
    dict, stored once) into a fresh temporary folder, passes it along, and removes it once the
    context has kept a copy."""
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


def resume(
    ctx: RunContext, task: Task, optimizer: torch.optim.Optimizer
) -> tuple[int, dict[str, Any] | None]:
    """Restore a run from ctx.latest_checkpoint(): the task's models, the optimizer (a finished
    run's checkpoint has none) and torch's global RNG state. Returns (iteration, the metrics
    reported with the checkpoint) to continue from; (0, None) when fresh. A checkpoint written
    before the data stream was a function of the iteration also holds "epoch" and "cutmix_rng":
    nothing reads them now (such a run continues on the stream's batches of its iteration)."""
    folder = ctx.latest_checkpoint()
    if folder is None:
        return 0, None
    path = os.path.join(folder, "state.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint folder {folder}: no state.pt to resume from")
    state = load_checkpoint(path)
    task.load_state(state, folder)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    return int(state["iteration"]), state.get("metrics")
