"""`distill_student`: train one student with MGD from two frozen teachers (one Tune trial's work),
the teachers either in the run or read back from a store of their targets
(DistillConfig.targets)."""

from __future__ import annotations

import dataclasses
import os
from functools import partial
from typing import Any

import torch

from ..config import DistillConfig
from ..losses import supervised_loss, weighted_total
from ..schema import LOSS_TERMS
from . import seeds
from .batches import Batch
from .builders import REAL, Builders
from .checkpoint import cpu_state_dict, load_model_state, unwrap
from .context import RunContext, rank
from .device import channels_last, compile_for_device
from .evaluate import run_miou
from .loop import fit
from .mgd_step import active_terms, mgd_losses
from .target_store import TargetReader, open_store
from .targets import config_teacher, live_targets, load_teacher, needs_teachers

__all__ = ["MGDTask", "distill_student", "load_teacher"]


class MGDTask:
    """One student trained with MGD from frozen teachers, as a task for `fit`; model.pt holds the
    student. With cfg.targets None, a teacher is loaded only when a term with a non-zero weight
    uses it and runs every iteration; with a store, no teacher is built: the data stream's loader
    reads this rank's targets of each iteration (target_store.open_store checks the store
    first)."""

    logged = ("loss", *(f"loss_{name}" for name in LOSS_TERMS), "kept_fraction")

    def __init__(
        self, cfg: DistillConfig, data, ctx: RunContext, builders: Builders = REAL
    ) -> None:
        self.cfg, self.num_classes, self.device = cfg, data.num_classes, ctx.device
        self.loss_weights = cfg.weights.as_dict()
        self.active = active_terms(self.loss_weights)
        self.rank = rank()
        need_deep, need_wide = needs_teachers(self.active)
        self.teacher_deep = self.teacher_wide = None
        self.stored_targets: TargetReader | None = None
        if cfg.targets is not None and (need_deep or need_wide):
            self.stored_targets = open_store(cfg, data, ctx.device)
        else:
            teachers = {
                role: config_teacher(cfg, role, data.num_classes, ctx.device, builders)
                for role, needed in (("deep", need_deep), ("wide", need_wide))
                if needed
            }
            self.teacher_deep, self.teacher_wide = teachers.get("deep"), teachers.get("wide")
        torch.manual_seed(seeds.student_init(cfg.seed))
        student = builders.model(
            cfg.student, data.num_classes, cfg.student_output_stride, cfg.backbone_weights
        )
        # compiled (on CUDA by default) before any DDP wrapping: dynamo traces no torch module
        student = compile_for_device(channels_last(student, ctx.device), ctx.device, cfg.compile)
        self.student = ctx.prepare_model(student)
        self.models = [self.student]
        self.global_seed = seeds.student_global(cfg.seed, self.rank)
        self.sup_loss = partial(supervised_loss, ohem=cfg.ohem)

    def cutmix_seed(self, iteration: int) -> int:
        return seeds.student_cutmix(self.cfg.seed, self.rank, iteration)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        targets = batch.targets
        if self.stored_targets is None:
            targets = live_targets(
                self.teacher_deep,
                self.teacher_wide,
                batch.x_l,
                batch.u0,
                batch.u1,
                batch.mask,
                self.active,
            )
        terms, stats = mgd_losses(
            self.student, batch, targets, self.active, self.cfg.confidence_threshold, self.sup_loss
        )
        return {
            "loss": weighted_total(terms, self.loss_weights),
            "kept_fraction": stats["kept_fraction"],
            **{f"loss_{name}": term for name, term in terms.items()},
        }

    def evaluate(self, val_loader) -> dict[str, Any]:
        return {
            "miou": run_miou(self.student, val_loader, self.num_classes, self.cfg, self.device)
        }

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, cpu_state_dict(self.student)  # the weights are in model.pt only

    def load_state(self, state: dict[str, Any], folder: str) -> None:
        unwrap(self.student).load_state_dict(load_model_state(os.path.join(folder, "model.pt")))


def distill_student(cfg: DistillConfig, ctx: RunContext, builders: Builders = REAL) -> dict:
    """Train cfg.student for cfg.iterations MGD iterations; evaluate and ctx.report every
    cfg.eval_every iterations and at the end (with state.pt / model.pt). Reports "iteration",
    "miou", "loss", "loss_sup", "loss_pixel", "loss_semantic", "loss_region" (0.0 for a term that
    is off), "kept_fraction", "lr", "iter_per_s", "data_wait_share", "done"; returns the final
    metrics. The networks and data come from `builders` (engine/builders.py)."""
    data = builders.datasets(cfg.data)
    if cfg.evaluate_on == "holdout":
        if not len(data.holdout):
            raise ValueError(
                f"evaluate_on='holdout': protocol {cfg.data.protocol} has no unlabeled image "
                "with a label to hold out"
            )
        data = dataclasses.replace(data, val=data.holdout)
    return fit(MGDTask(cfg, data, ctx, builders), cfg, data, ctx)
