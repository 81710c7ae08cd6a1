"""Teacher targets: what MGD's losses need from the frozen teachers, computed by one function for
the live path (teachers in the run) and for the writer of a store (engine/target_store.py).

Why targets rather than logits: L_P's labels for the mixed image x_m come from the teachers'
outputs on u0 and u1 mixed by the BINARY CutMix mask M, and the argmax / max-softmax of
(1 - M) * T(u0) + M * T(u1) is, pixel by pixel, that of T(u0) where M = 0 and of T(u1) where M = 1.
So the per-pixel labels and confidences of T(u0), T(u1) and T(x_l) serve every mask, hence every
trial seed; only L_I and L_R need a teacher forward on x_m, once per mask stream, and they read
only a B x C pool (T_D's logits) and a B x 49 x 49 similarity (T_W's decoder features) of it.

A target set is a flat dict of tensors, per named batch b in (u0, u1, x_l) of each teacher T in
(deep, wide): "T.b.label" (argmax, B x H x W uint8) and "T.b.code" (round(255 * max softmax),
B x H x W uint8); per mask stream s: "deep.x_m@s.pooled" (B x C float32, losses.pooled_logits)
and "wide.x_m@s.similarity" (B x 49 x 49 float32, losses.region_similarity). `for_stream` drops
the "@s" of one stream: the keys the step (mgd_step.mgd_losses) reads.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import DistillConfig
from ..losses import REGION_GRID, label_and_code, pooled_logits, region_similarity
from ..models import build_model
from . import mgd_step
from .checkpoint import load_model_state
from .device import channels_last, compile_for_device
from .mgd_step import MIXED, PIXEL_BATCHES, freeze, mix, needed

MAX_CLASSES = 255  # labels are uint8 targets, 0..254 (255 is the ignore index)


def load_teacher(
    arch: str,
    num_classes: int,
    path: str | None,
    option: str,
    device: torch.device,
    train_mode: bool,
    compiled: bool | None = False,
) -> nn.Module:
    """A frozen teacher from a plain state-dict file (model.pt or a state.pt), its forward
    captured when `compiled` (a config's `compile`: None = on CUDA; device.compile_for_device)."""
    if path is None:
        raise ValueError(
            f"DistillConfig.{option} is required: the loss weights use this teacher "
            f"(train one with train_teacher, or set its weight terms to 0)"
        )
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{num_classes} classes: teacher targets hold labels 0..254 as uint8")
    teacher = build_model(arch, num_classes)
    try:
        teacher.load_state_dict(load_model_state(path))
    except RuntimeError as err:
        raise ValueError(
            f"DistillConfig.{option}={path}: not a {arch} with {num_classes} classes ({err})"
        ) from err
    teacher = channels_last(freeze(teacher.to(device), train_mode), device)
    return compile_for_device(teacher, device, compiled, frozen=True)


def config_teacher(
    cfg: DistillConfig, role: str, num_classes: int, device: torch.device
) -> nn.Module:
    """The frozen `role` ("deep" or "wide") teacher a distillation config names (load_teacher:
    its architecture and file, its train mode and compile switch)."""
    return load_teacher(
        getattr(cfg, f"teacher_{role}"),
        num_classes,
        getattr(cfg, f"teacher_{role}_checkpoint"),
        f"teacher_{role}_checkpoint",
        device,
        cfg.teacher_train_mode,
        cfg.compile,
    )


@torch.no_grad()
def compute_targets(
    teachers: dict[str, nn.Module | None],
    x_l: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    masks: dict[int, torch.Tensor],
    pixel: bool = True,
    mixed: bool = True,
) -> dict[str, torch.Tensor]:
    """The targets of one iteration (module docstring) from each teacher in `teachers` ({"deep",
    "wide"} -> frozen model, or None to skip it): its (u0, u1, x_l) targets when `pixel`, and for
    each mask stream s of `masks` (s -> CutMix mask B x S x S) its x_m^s target when `mixed`.

    Images B x 3 x S x S. ONE forward per teacher over all its named batches, u0, u1, x_l, then
    x_m of each stream in `masks`' order: in train mode each named batch is its own BN group
    (teacher_forward), so a batch's outputs do not depend on which others share the forward."""
    out: dict[str, torch.Tensor] = {}
    for name, teacher in teachers.items():
        if teacher is None or not (pixel or mixed):
            continue
        images = dict(zip(PIXEL_BATCHES, (u0, u1, x_l))) if pixel else {}
        if mixed:
            images.update({f"x_m@{s}": mix(mask, u0, u1) for s, mask in masks.items()})
        # Looked up on the module: benchmarks/engine.py times teacher forwards by replacing it.
        outputs = mgd_step.teacher_forward(teacher, images)
        for batch in PIXEL_BATCHES if pixel else ():
            label, code, _ = label_and_code(outputs[batch]["logits"])
            out[f"{name}.{batch}.label"], out[f"{name}.{batch}.code"] = label.to(torch.uint8), code
        for s in masks if mixed else ():
            result = outputs[f"x_m@{s}"]
            out[f"{name}.x_m@{s}.{MIXED[name][1]}"] = (
                pooled_logits(result["logits"])
                if name == "deep"
                else region_similarity(result["features"], REGION_GRID)
            )
    return out


def for_stream(targets: dict[str, torch.Tensor], stream: int) -> dict[str, torch.Tensor]:
    """One mask stream's targets: the x_m targets of `stream` under keys without "@stream", the
    per-pixel ones as they are; other streams' x_m targets left out."""
    suffix = f"@{stream}."
    selected = {}
    for key, value in targets.items():
        if "@" not in key:
            selected[key] = value
        elif suffix in key:
            selected[key.replace(suffix, ".")] = value
    return selected


def live_targets(
    teacher_deep: nn.Module | None,
    teacher_wide: nn.Module | None,
    x_l: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    mask: torch.Tensor,
    active: set[str],
) -> dict[str, torch.Tensor]:
    """One iteration's targets from teachers in the run, only those the `active` terms use (a
    supervised-only run forwards no teacher): for_stream's keys, as a store gives them."""
    need = needed(active)
    targets: dict[str, torch.Tensor] = {}
    for name, teacher in (("deep", teacher_deep), ("wide", teacher_wide)):
        if any(need[name].values()):
            if teacher is None:
                raise ValueError(f"terms {sorted(active)} need teacher_{name}, which is None")
            targets.update(compute_targets({name: teacher}, x_l, u0, u1, {0: mask}, **need[name]))
    return for_stream(targets, 0)
