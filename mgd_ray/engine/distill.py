"""`distill_student`: train one student with MGD from two frozen teachers (one Tune trial's work)."""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch

from ..config import DistillConfig
from ..data import build_datasets
from ..losses import supervised_loss, weighted_total
from ..models import build_model
from ..schema import LOSS_TERMS
from . import seeds
from .checkpoint import cpu_state_dict, load_model_state, unwrap
from .context import RunContext, rank
from .device import channels_last
from .evaluate import evaluate
from .loop import fit
from .mgd_step import freeze, mgd_losses, needs_teachers


def load_teacher(arch: str, num_classes: int, path: str | None, option: str, device: torch.device,
                 train_mode: bool) -> torch.nn.Module:
    """A frozen teacher from a plain state-dict file (model.pt or a state.pt)."""
    if path is None:
        raise ValueError(f"DistillConfig.{option} is required: the loss weights use this teacher "
                         f"(train one with train_teacher, or set its weight terms to 0)")
    teacher = build_model(arch, num_classes)
    try:
        teacher.load_state_dict(load_model_state(path))
    except RuntimeError as err:
        raise ValueError(f"DistillConfig.{option}={path}: not a {arch} with {num_classes} classes ({err})") from err
    return channels_last(freeze(teacher.to(device), train_mode), device)


class MGDTask:
    """One student trained with MGD from frozen teachers, as a task for `fit`. A teacher is loaded
    only when a term with a non-zero weight uses it; model.pt holds the student."""

    logged = ("loss", *(f"loss_{name}" for name in LOSS_TERMS), "kept_fraction")

    def __init__(self, cfg: DistillConfig, data, ctx: RunContext) -> None:
        self.cfg, self.num_classes, self.device = cfg, data.num_classes, ctx.device
        self.loss_weights = cfg.weights.as_dict()
        need_deep, need_wide = needs_teachers(self.loss_weights)
        self.teacher_deep = (load_teacher(cfg.teacher_deep, data.num_classes, cfg.teacher_deep_checkpoint,
                                          "teacher_deep_checkpoint", ctx.device, cfg.teacher_train_mode)
                             if need_deep else None)
        self.teacher_wide = (load_teacher(cfg.teacher_wide, data.num_classes, cfg.teacher_wide_checkpoint,
                                          "teacher_wide_checkpoint", ctx.device, cfg.teacher_train_mode)
                             if need_wide else None)
        torch.manual_seed(seeds.student_init(cfg.seed))
        student = build_model(cfg.student, data.num_classes, cfg.student_output_stride, cfg.backbone_weights)
        self.student = ctx.prepare_model(channels_last(student, ctx.device))
        self.models = [self.student]
        self.cutmix_seed = seeds.student_cutmix(cfg.seed, rank())
        self.global_seed = seeds.student_global(cfg.seed, rank())
        self.sup_loss = partial(supervised_loss, ohem=cfg.ohem)

    def losses(self, x_l, y, u0, u1, mask) -> dict[str, torch.Tensor]:
        terms, stats = mgd_losses(self.student, self.teacher_deep, self.teacher_wide, x_l, y, u0, u1, mask,
                                  self.loss_weights, self.cfg.confidence_threshold, self.sup_loss)
        return {"loss": weighted_total(terms, self.loss_weights), "kept_fraction": stats["kept_fraction"],
                **{f"loss_{name}": term for name, term in terms.items()}}

    def evaluate(self, val_loader) -> dict[str, Any]:
        return {"miou": evaluate(self.student, val_loader, self.num_classes, self.cfg.data.crop_size, self.device,
                                 self.cfg.amp)["miou"]}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {}, cpu_state_dict(self.student)  # the weights are in model.pt only

    def load_state(self, state: dict[str, Any], folder: str) -> None:
        unwrap(self.student).load_state_dict(load_model_state(os.path.join(folder, "model.pt")))


def distill_student(cfg: DistillConfig, ctx: RunContext) -> dict:
    """Train cfg.student for cfg.iterations MGD iterations; evaluate and ctx.report every
    cfg.eval_every iterations and at the end (with state.pt / model.pt). Reports "iteration", "miou",
    "loss", "loss_sup", "loss_pixel", "loss_semantic", "loss_region" (0.0 for a term that is off),
    "kept_fraction", "lr", "iter_per_s", "data_wait_share", "done"; returns the final metrics."""
    data = build_datasets(cfg.data)
    return fit(MGDTask(cfg, data, ctx), cfg, data, ctx)
