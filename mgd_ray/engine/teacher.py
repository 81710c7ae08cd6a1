"""`train_teacher`: Cross Pseudo Supervision with CutMix (Chen et al., CVPR 2021) for one teacher
architecture, on the same partition the students use.

Two branches of cfg.arch start from different seeds. Each iteration, both branches are supervised
on the labeled batch, and each branch's hard pseudo labels on the CutMix-mixed unlabeled image
supervise the other branch (weight cfg.cps_weight). Pseudo labels of the mix are built as MGD
builds them: argmax of (1 - M) * P(u0) + M * P(u1), from no-grad forwards on the unmixed images.
"""

from __future__ import annotations

from typing import Any

import torch

from ..config import TeacherConfig
from ..data.cutmix import mix
from ..losses import masked_cross_entropy, pseudo_label, supervised_loss
from . import seeds
from .batch_groups import batch_groups
from .batches import Batch
from .builders import REAL, Builders
from .checkpoint import cpu_state_dict, unwrap
from .context import RunContext, rank
from .device import channels_last, compile_for_device
from .evaluate import run_miou
from .loop import fit


def cps_losses(
    branches,
    x_l: torch.Tensor,
    y: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    mask: torch.Tensor,
    ohem: bool = False,
) -> dict[str, torch.Tensor]:
    """{"sup": CE of both branches on (x_l, y), "cps": CE of each branch on x_m against the other's
    mixed pseudo labels}. Images B x 3 x S x S, y and mask B x S x S."""
    # The official code runs u0, u1, x_m and x_l through each branch in separate forwards, so each
    # batch is normalised with its own BN statistics; batch_groups does that inside one batched
    # forward per branch (DDP allows one forward with grad per backward), x_m before x_l as there.
    with torch.no_grad():
        pseudo = []
        for branch in branches:
            with batch_groups(branch, 2):
                logits = branch(torch.cat([u0, u1]))["logits"]
            label, _ = pseudo_label(mix(mask, *logits.chunk(2)))
            pseudo.append(label)
    x_m = mix(mask, u0, u1)
    groups = 2 if x_m.shape[0] == x_l.shape[0] else 1
    sup, cps = [], []
    for index, branch in enumerate(branches):
        with batch_groups(branch, groups):
            out = branch(torch.cat([x_m, x_l]))["logits"]
        s_m, s_l = out[: x_m.shape[0]], out[x_m.shape[0] :]
        sup.append(supervised_loss(s_l, y, ohem=ohem))
        cps.append(masked_cross_entropy(s_m, pseudo[1 - index]))
    return {"sup": torch.stack(sup).sum(), "cps": torch.stack(cps).sum()}


# The CPS branch a teacher run keeps: the first, the official code's branch 1 (not the better one
# on val, which would choose the teacher by the set that scores it). Part of the teachers' cache
# key (distributed/teachers.py).
TEACHER_BRANCH = 0


class CPSTask:
    """Two CPS branches of cfg.arch, as a task for `fit`. Branch TEACHER_BRANCH is the run's model,
    as in the official code (its evaluation runs branch 1, and its student loads each teacher
    checkpoint's branch 1): its val mIoU is "miou" and its weights are model.pt; state.pt holds
    both branches ("branches"), which resuming needs."""

    logged = ("loss", "loss_sup", "loss_cps")

    def __init__(
        self, cfg: TeacherConfig, data, ctx: RunContext, builders: Builders = REAL
    ) -> None:
        self.cfg, self.num_classes, self.device = cfg, data.num_classes, ctx.device
        self.models = []
        for index in range(2):
            torch.manual_seed(seeds.teacher_branch_init(cfg.seed, index))
            model = builders.model(
                cfg.arch, data.num_classes, cfg.output_stride, cfg.backbone_weights
            )
            model = compile_for_device(channels_last(model, ctx.device), ctx.device, cfg.compile)
            self.models.append(ctx.prepare_model(model))
        self.rank = rank()
        self.global_seed = seeds.teacher_global(cfg.seed, self.rank)
        self.stored_targets = None

    def cutmix_seed(self, iteration: int) -> int:
        return seeds.teacher_cutmix(self.cfg.seed, self.rank, iteration)

    def losses(self, batch: Batch) -> dict[str, torch.Tensor]:
        terms = cps_losses(
            self.models, batch.x_l, batch.y, batch.u0, batch.u1, batch.mask, self.cfg.ohem
        )
        return {
            "loss": terms["sup"] + self.cfg.cps_weight * terms["cps"],
            "loss_sup": terms["sup"],
            "loss_cps": terms["cps"],
        }

    def evaluate(self, val_loader) -> dict[str, Any]:
        model = self.models[TEACHER_BRANCH]
        return {"miou": run_miou(model, val_loader, self.num_classes, self.cfg, self.device)}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        branches = [cpu_state_dict(branch) for branch in self.models]
        return {"branches": branches}, branches[TEACHER_BRANCH]

    def load_state(self, state: dict[str, Any], folder: str) -> None:
        for branch, branch_state in zip(self.models, state["branches"]):
            unwrap(branch).load_state_dict(branch_state)


def train_teacher(cfg: TeacherConfig, ctx: RunContext, builders: Builders = REAL) -> dict:
    """Train two CPS branches of cfg.arch; evaluate the kept one (TEACHER_BRANCH) and ctx.report
    every cfg.eval_every iterations and at the end; model.pt holds it. Reports "iteration",
    "miou", "loss", "loss_sup", "loss_cps", "lr", "iter_per_s", "data_wait_share", "done";
    returns the final metrics. The networks and data come from `builders` (engine/builders.py)."""
    data = builders.datasets(cfg.data)
    return fit(CPSTask(cfg, data, ctx, builders), cfg, data, ctx)
