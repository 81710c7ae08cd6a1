"""`train_teacher`: Cross Pseudo Supervision with CutMix (Chen et al., CVPR 2021) for one teacher
architecture, on the same partition the students use.

Two branches of cfg.arch start from different seeds. Each iteration, both branches are supervised on
the labeled batch, and each branch's hard pseudo labels on the CutMix-mixed unlabeled image
supervise the other branch (weight cfg.cps_weight). Pseudo labels of the mix are built as MGD builds
them: argmax of (1 - M) * P(u0) + M * P(u1), from no-grad forwards on the unmixed images.
"""
from __future__ import annotations

from functools import partial

import torch

from ..config import TeacherConfig
from ..data import build_datasets
from ..losses import masked_cross_entropy, pseudo_label, supervised_loss
from ..models import build_model
from .checkpoint import rng_state, unwrap
from .context import RunContext, rank
from .evaluate import evaluate
from .loop import Batches, RunningMeans, autocast, optimizer_step, report_with_checkpoint, resume
from .mgd_step import mix
from .optim import build_optimizer, lr_at, set_lr


def cps_losses(branches, x_l: torch.Tensor, y: torch.Tensor, u0: torch.Tensor, u1: torch.Tensor,
               mask: torch.Tensor, ohem: bool = False) -> dict[str, torch.Tensor]:
    """{"sup": CE of both branches on (x_l, y), "cps": CE of each branch on x_m against the other's
    mixed pseudo labels}. Images B x 3 x S x S, y and mask B x S x S."""
    with torch.no_grad():
        pseudo = []
        for branch in branches:
            logits = branch(torch.cat([u0, u1]))["logits"]
            label, _ = pseudo_label(mix(mask, *logits.chunk(2)))
            pseudo.append(label)
    x_m = mix(mask, u0, u1)
    sup, cps = [], []
    for index, branch in enumerate(branches):
        # One forward per branch and step: DDP allows one forward with grad per backward.
        out = branch(torch.cat([x_l, x_m]))["logits"]
        s_l, s_m = out[:x_l.shape[0]], out[x_l.shape[0]:]
        sup.append(supervised_loss(s_l, y, ohem=ohem))
        cps.append(masked_cross_entropy(s_m, pseudo[1 - index]))
    return {"sup": torch.stack(sup).sum(), "cps": torch.stack(cps).sum()}


def train_teacher(cfg: TeacherConfig, ctx: RunContext) -> dict:
    """Train two CPS branches of cfg.arch; evaluate both and ctx.report every cfg.eval_every
    iterations and at the end. model.pt holds the branch with the higher val mIoU (metric "branch").
    Reports "iteration", "miou", "loss", "loss_sup", "loss_cps", "lr", "branch", "miou_branch0/1",
    "iter_per_s", "data_wait_share", "done"; returns the final metrics."""
    device = ctx.device
    data = build_datasets(cfg.data)
    branches = []
    for index in range(2):
        torch.manual_seed(cfg.seed * 1000 + index)  # CPS needs two differently initialised branches
        model = build_model(cfg.arch, data.num_classes, cfg.output_stride, cfg.backbone_weights)
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        branches.append(ctx.prepare_model(model))
    optimizer = build_optimizer(branches, cfg.optim)
    mask_gen = torch.Generator().manual_seed(cfg.seed * 1000 + 500 + rank())
    torch.manual_seed(cfg.seed * 1000 + 100 + rank())

    def load_branches(state: dict, folder: str) -> None:
        for branch, branch_state in zip(branches, state["branches"]):
            unwrap(branch).load_state_dict(branch_state)

    start, epoch = resume(ctx, optimizer, mask_gen, load_branches)
    batches = Batches(data, cfg.data, ctx, epoch)
    meter = RunningMeans()

    def evaluate_and_report(iteration: int, lr: float, done: bool) -> dict:
        means = meter.read(device)
        mious = [evaluate(b, batches.val_loader, data.num_classes, cfg.data.crop_size, device, cfg.amp)["miou"]
                 for b in branches]
        best = int(mious[1] > mious[0])
        metrics = {"iteration": iteration, "miou": mious[best], "loss": means.get("loss", 0.0),
                   "loss_sup": means.get("loss_sup", 0.0), "loss_cps": means.get("loss_cps", 0.0), "lr": lr,
                   "branch": best, "miou_branch0": mious[0], "miou_branch1": mious[1],
                   **batches.read_window(), "done": done}
        report_with_checkpoint(ctx, metrics, partial(_state, branches, best, optimizer, iteration,
                                                     batches.epoch, mask_gen))
        return metrics

    if start >= cfg.iterations:  # resumed from a finished run: report its final state once more
        return evaluate_and_report(start, 0.0, True)
    for branch in branches:
        branch.train()
    metrics: dict = {}
    for iteration in range(start, cfg.iterations):
        lr = lr_at(cfg.optim, iteration, cfg.iterations)
        set_lr(optimizer, lr)
        x_l, y, u0, u1, mask = batches.next_inputs(device, mask_gen)
        with autocast(device, cfg.amp):
            terms = cps_losses(branches, x_l, y, u0, u1, mask, cfg.ohem)
            total = terms["sup"] + cfg.cps_weight * terms["cps"]
        meter.add(optimizer_step(optimizer, total, {"loss": total, "loss_sup": terms["sup"], "loss_cps": terms["cps"]},
                                 iteration + 1, cfg.optim.grad_clip))
        done = iteration + 1 == cfg.iterations
        if (iteration + 1) % cfg.eval_every == 0 or done:
            metrics = evaluate_and_report(iteration + 1, lr, done)
    return metrics


def _state(branches, best: int, optimizer, iteration: int, epoch: int, mask_gen: torch.Generator):
    states = [{k: v.detach().cpu() for k, v in unwrap(b).state_dict().items()} for b in branches]
    state = {"branches": states, "optimizer": optimizer.state_dict(), "iteration": iteration, "epoch": epoch,
             "cutmix_rng": mask_gen.get_state(), "rng": rng_state()}
    return state, states[best]
