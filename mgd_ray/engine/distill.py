"""`distill_student`: train one student with MGD from two frozen teachers (one Tune trial's work)."""
from __future__ import annotations

import os
from functools import partial

import torch

from ..config import DistillConfig
from ..data import build_datasets
from ..losses import supervised_loss, weighted_total
from ..models import build_model
from .checkpoint import load_model_state, rng_state, unwrap
from .context import RunContext, rank
from .evaluate import evaluate
from .loop import Batches, RunningMeans, autocast, optimizer_step, report_with_checkpoint, resume
from .mgd_step import freeze, mgd_losses, needs_teachers
from .optim import build_optimizer, lr_at, set_lr

TERMS = ("sup", "pixel", "semantic", "region")


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
    teacher = freeze(teacher.to(device), train_mode)
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    return teacher


def distill_student(cfg: DistillConfig, ctx: RunContext) -> dict:
    """Train cfg.student for cfg.iterations MGD iterations; evaluate and ctx.report every
    cfg.eval_every iterations and at the end (with state.pt / model.pt). Returns the final metrics."""
    device = ctx.device
    data = build_datasets(cfg.data)
    weights = cfg.weights.as_dict()
    need_deep, need_wide = needs_teachers(weights)
    teacher_deep = (load_teacher(cfg.teacher_deep, data.num_classes, cfg.teacher_deep_checkpoint,
                                 "teacher_deep_checkpoint", device, cfg.teacher_train_mode) if need_deep else None)
    teacher_wide = (load_teacher(cfg.teacher_wide, data.num_classes, cfg.teacher_wide_checkpoint,
                                 "teacher_wide_checkpoint", device, cfg.teacher_train_mode) if need_wide else None)

    torch.manual_seed(cfg.seed)  # the same initial student for every variant of a seed
    student = build_model(cfg.student, data.num_classes, cfg.student_output_stride, cfg.backbone_weights)
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    student = ctx.prepare_model(student)
    optimizer = build_optimizer([student], cfg.optim)
    mask_gen = torch.Generator().manual_seed(cfg.seed * 1000 + rank())  # a different CutMix per rank
    torch.manual_seed(cfg.seed * 1000 + rank())

    def load_student(state: dict, folder: str) -> None:  # the weights are in model.pt only
        unwrap(student).load_state_dict(load_model_state(os.path.join(folder, "model.pt")))

    start, epoch = resume(ctx, optimizer, mask_gen, load_student)
    batches = Batches(data, cfg.data, ctx, epoch)
    sup_loss = partial(supervised_loss, ohem=cfg.ohem)
    meter = RunningMeans()

    def evaluate_and_report(iteration: int, lr: float, done: bool) -> dict:
        metrics = _metrics(meter.read(device), iteration, lr, batches.read_window())
        metrics["miou"] = evaluate(student, batches.val_loader, data.num_classes, cfg.data.crop_size, device,
                                   cfg.amp)["miou"]
        metrics["done"] = done
        report_with_checkpoint(ctx, metrics, partial(_state, student, optimizer, iteration, batches.epoch, mask_gen))
        return metrics

    if start >= cfg.iterations:  # resumed from a finished run: report its final state once more
        return evaluate_and_report(start, 0.0, True)
    student.train()
    metrics: dict = {}
    for iteration in range(start, cfg.iterations):
        lr = lr_at(cfg.optim, iteration, cfg.iterations)
        set_lr(optimizer, lr)
        x_l, y, u0, u1, mask = batches.next_inputs(device, mask_gen)
        with autocast(device, cfg.amp):
            terms, stats = mgd_losses(student, teacher_deep, teacher_wide, x_l, y, u0, u1, mask, weights,
                                      cfg.confidence_threshold, sup_loss)
            total = weighted_total(terms, weights)
        meter.add(optimizer_step(optimizer, total, {"loss": total, "kept_fraction": stats["kept_fraction"],
                                                    **{f"loss_{n}": t for n, t in terms.items()}},
                                 iteration + 1, cfg.optim.grad_clip))
        done = iteration + 1 == cfg.iterations
        if (iteration + 1) % cfg.eval_every == 0 or done:
            metrics = evaluate_and_report(iteration + 1, lr, done)
    return metrics


def _metrics(means: dict, iteration: int, lr: float, window: dict[str, float]) -> dict:
    metrics = {"iteration": iteration, "miou": 0.0, "loss": means.get("loss", 0.0)}
    metrics.update({f"loss_{n}": means.get(f"loss_{n}", 0.0) for n in TERMS})
    metrics.update({"kept_fraction": means.get("kept_fraction", 0.0), "lr": lr, **window, "done": False})
    return metrics


def _state(student, optimizer, iteration: int, epoch: int, mask_gen: torch.Generator):
    model = {k: v.detach().cpu() for k, v in unwrap(student).state_dict().items()}
    state = {"optimizer": optimizer.state_dict(), "iteration": iteration, "epoch": epoch,
             "cutmix_rng": mask_gen.get_state(), "rng": rng_state()}
    return state, model
