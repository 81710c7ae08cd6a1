"""Teacher targets: what MGD's losses need from the frozen teachers, computed by one function for
the live path (teachers in the run) and for the writer of a store (engine/target_store.py).

Why targets rather than logits: L_P's labels for the mixed image x_m come from the teachers'
outputs on u0 and u1 mixed by the BINARY CutMix mask M, and the argmax / max-softmax of
(1 - M) * T(u0) + M * T(u1) is, pixel by pixel, that of T(u0) where M = 0 and of T(u1) where M = 1.
So the per-pixel labels and confidences of T(u0), T(u1) and T(x_l) serve every mask, hence every
trial seed; only L_I and L_R need a teacher forward on x_m, once per mask stream, and they read
only a B x C pool (T_D's logits) and a B x 49 x 49 similarity (T_W's decoder features) of it.

The contract, for one step (one mask stream): `Targets` holds a `TeacherTargets` per teacher the
active terms use; that holds a `PixelTargets` (argmax label and round(255 * max softmax) code,
both B x H x W uint8) per named batch u0, u1, x_l when L_P is on, and `mixed`, its x_m target,
when its x_m term is on (deep: B x C float32 pooled logits for L_I, losses.pooled_logits; wide:
B x 49 x 49 float32 similarity for L_R, losses.region_similarity).

A store's file holds the targets of every mask stream s of an iteration as flat named arrays,
named here only (`to_arrays`, `array_names`, `from_arrays`): "T.b.label" and "T.b.code" for
teacher T and named batch b, "deep.x_m@s.pooled" and "wide.x_m@s.similarity" per stream s.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

from ..config import DistillConfig
from ..data.cutmix import mix
from ..losses import REGION_GRID, label_and_code, pooled_logits, region_similarity
from .batch_groups import batch_groups
from .builders import REAL, Builders
from .checkpoint import load_model_state
from .device import channels_last, compile_for_device

TEACHERS = ("deep", "wide")
PIXEL_BATCHES = ("u0", "u1", "x_l")  # what L_P needs of each teacher
# What the mixed image x_m gives each teacher's term: (term, target name).
MIXED = {"deep": ("semantic", "pooled"), "wide": ("region", "similarity")}
MAX_CLASSES = 255  # labels are uint8 targets, 0..254 (255 is the ignore index)


def needed(active: set[str]) -> dict[str, dict[str, bool]]:
    """{teacher: {"pixel": needs its (u0, u1, x_l) targets, "mixed": needs its x_m target}} for
    the `active` terms."""
    return {t: {"pixel": "pixel" in active, "mixed": MIXED[t][0] in active} for t in TEACHERS}


def needs_teachers(active: set[str]) -> tuple[bool, bool]:
    """(needs teacher_deep, needs teacher_wide) for the `active` terms."""
    need = needed(active)
    return any(need["deep"].values()), any(need["wide"].values())


@dataclass(frozen=True)
class PixelTargets:
    """One teacher's per-pixel targets of one named batch: argmax label and confidence code."""

    label: torch.Tensor  # B x H x W uint8
    code: torch.Tensor  # B x H x W uint8, round(255 * max softmax)


@dataclass(frozen=True)
class TeacherTargets:
    """One teacher's targets of one step: per named batch when L_P is on, its x_m target (`mixed`)
    when its x_m term is on (module docstring); None where no active term reads it."""

    u0: PixelTargets | None = None
    u1: PixelTargets | None = None
    x_l: PixelTargets | None = None
    mixed: torch.Tensor | None = None

    def pixel(self, batch: str) -> PixelTargets | None:
        return getattr(self, batch)


@dataclass(frozen=True)
class Targets:
    """One step's teacher targets: a TeacherTargets per teacher the active terms use."""

    deep: TeacherTargets | None = None
    wide: TeacherTargets | None = None

    def teacher(self, name: str) -> TeacherTargets | None:
        return getattr(self, name)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Targets:
        """The same targets with `fn` applied to every tensor."""

        def apply(value):
            if value is None:
                return None
            if isinstance(value, torch.Tensor):
                return fn(value)
            return replace(value, **{f.name: apply(getattr(value, f.name)) for f in fields(value)})

        return apply(self)

    def to(self, device: torch.device) -> Targets:
        return self.map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> Targets:  # what a DataLoader with pin_memory calls on its items
        return self.map(torch.Tensor.pin_memory)

    def missing(self, active: set[str]) -> list[str]:
        """The parts the `active` terms need that these targets lack ("deep.u0", "wide.mixed")."""
        gaps = []
        for name, need in needed(active).items():
            held = self.teacher(name) or TeacherTargets()
            parts = (PIXEL_BATCHES if need["pixel"] else ()) + (
                ("mixed",) if need["mixed"] else ()
            )
            gaps += [f"{name}.{part}" for part in parts if getattr(held, part) is None]
        return gaps


def freeze(teacher: nn.Module, train_mode: bool = False) -> nn.Module:
    """No gradients; eval mode, or train mode (the paper's: BN normalises with the batch's own
    statistics) with BN momentum 0, so the running statistics, and hence the teacher, never
    change."""
    teacher.requires_grad_(False)
    teacher.train(train_mode)
    if train_mode:
        for module in teacher.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
            elif isinstance(module, nn.Dropout):
                # batch statistics, yes; random dropped activations in the targets, no
                module.eval()
    return teacher


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def teacher_forward(
    teacher: nn.Module, images: dict[str, torch.Tensor]
) -> dict[str, dict[str, torch.Tensor]]:
    """name -> {"logits", "features"} for each named batch (all B x 3 x S x S), from ONE forward
    over the concatenated batches (fewer, larger kernels than a forward per batch).

    In eval mode every layer treats each image on its own. In train mode (the paper's) each named
    batch must be normalised with its own statistics, as the official per-batch forwards do:
    `batch_groups` makes every BN do that inside the batched forward, and on several ranks combines
    each batch's statistics over the ranks, as the official SyncBatchNorm did. Batches of unequal
    sizes fall back to one forward each."""
    names = list(images)
    sizes = [images[name].shape[0] for name in names]
    if teacher.training and len(set(sizes)) > 1:
        return {name: teacher(images[name]) for name in names}
    groups = len(names) if teacher.training else 1
    with batch_groups(teacher, groups, sync=teacher.training and _distributed()):
        out = teacher(torch.cat([images[name] for name in names]))
    logits, features = out["logits"].split(sizes), out["features"].split(sizes)
    return {name: {"logits": logits[i], "features": features[i]} for i, name in enumerate(names)}


def load_teacher(
    arch: str,
    num_classes: int,
    path: str | None,
    option: str,
    device: torch.device,
    train_mode: bool,
    compiled: bool | None = False,
    builders: Builders = REAL,
) -> nn.Module:
    """A frozen teacher from a plain state-dict file (model.pt or a state.pt), its forward
    captured when `compiled` (a config's `compile`: None = on CUDA; device.compile_for_device),
    built by `builders.model`."""
    if path is None:
        raise ValueError(
            f"DistillConfig.{option} is required: the loss weights use this teacher "
            f"(train one with train_teacher, or set its weight terms to 0)"
        )
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{num_classes} classes: teacher targets hold labels 0..254 as uint8")
    teacher = builders.model(arch, num_classes)
    try:
        teacher.load_state_dict(load_model_state(path))
    except RuntimeError as err:
        raise ValueError(
            f"DistillConfig.{option}={path}: not a {arch} with {num_classes} classes ({err})"
        ) from err
    teacher = channels_last(freeze(teacher.to(device), train_mode), device)
    return compile_for_device(teacher, device, compiled, frozen=True)


def config_teacher(
    cfg: DistillConfig,
    role: str,
    num_classes: int,
    device: torch.device,
    builders: Builders = REAL,
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
        builders,
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
) -> dict[int, Targets]:
    """The targets of one iteration for each mask stream s of `masks` (s -> CutMix mask
    B x S x S), from each teacher in `teachers` ({"deep", "wide"} -> frozen model, or None to skip
    it): its (u0, u1, x_l) targets when `pixel`, shared by every stream, and its x_m^s target when
    `mixed`.

    Images B x 3 x S x S. ONE forward per teacher over all its named batches, u0, u1, x_l, then
    x_m of each stream in `masks`' order: in train mode each named batch is its own BN group
    (teacher_forward), so a batch's outputs do not depend on which others share the forward."""
    per_teacher: dict[str, dict[int, TeacherTargets]] = {}
    for name, teacher in teachers.items():
        if teacher is None or not (pixel or mixed):
            continue
        images = dict(zip(PIXEL_BATCHES, (u0, u1, x_l))) if pixel else {}
        if mixed:
            images.update({("x_m", s): mix(mask, u0, u1) for s, mask in masks.items()})
        outputs = teacher_forward(teacher, images)
        shared = {}
        for batch in PIXEL_BATCHES if pixel else ():
            label, code, _ = label_and_code(outputs[batch]["logits"])
            shared[batch] = PixelTargets(label.to(torch.uint8), code)
        per_teacher[name] = {
            s: TeacherTargets(**shared, mixed=_mixed(name, outputs[("x_m", s)]) if mixed else None)
            for s in masks
        }
    return {s: Targets(**{name: t[s] for name, t in per_teacher.items()}) for s in masks}


def _mixed(teacher: str, output: dict[str, torch.Tensor]) -> torch.Tensor:
    """A teacher's x_m target from its outputs on x_m (module docstring)."""
    if teacher == "deep":
        return pooled_logits(output["logits"])
    return region_similarity(output["features"], REGION_GRID)


def live_targets(
    teacher_deep: nn.Module | None,
    teacher_wide: nn.Module | None,
    x_l: torch.Tensor,
    u0: torch.Tensor,
    u1: torch.Tensor,
    mask: torch.Tensor,
    active: set[str],
) -> Targets:
    """One iteration's targets from teachers in the run, only those the `active` terms use (a
    supervised-only run forwards no teacher), as a store gives them."""
    need = needed(active)
    parts: dict[str, TeacherTargets] = {}
    for name, teacher in (("deep", teacher_deep), ("wide", teacher_wide)):
        if any(need[name].values()):
            if teacher is None:
                raise ValueError(f"terms {sorted(active)} need teacher_{name}, which is None")
            streams = compute_targets({name: teacher}, x_l, u0, u1, {0: mask}, **need[name])
            parts[name] = streams[0].teacher(name)
    return Targets(**parts)


def _pixel_name(teacher: str, batch: str, kind: str) -> str:
    return f"{teacher}.{batch}.{kind}"


def _mixed_name(teacher: str, stream: int) -> str:
    return f"{teacher}.x_m@{stream}.{MIXED[teacher][1]}"


def to_arrays(streams: dict[int, Targets]) -> dict[str, torch.Tensor]:
    """One iteration's targets of every stream as a store's named arrays (module docstring), per
    teacher its per-pixel ones (shared by the streams) once, then its x_m one of each stream."""
    arrays: dict[str, torch.Tensor] = {}
    for name in TEACHERS:
        held = {s: t.teacher(name) for s, t in streams.items() if t.teacher(name) is not None}
        if not held:
            continue
        shared = next(iter(held.values()))  # every stream holds the same per-pixel targets
        for batch in PIXEL_BATCHES:
            if (pixel := shared.pixel(batch)) is not None:
                arrays[_pixel_name(name, batch, "label")] = pixel.label
                arrays[_pixel_name(name, batch, "code")] = pixel.code
        for stream, part in held.items():
            if part.mixed is not None:
                arrays[_mixed_name(name, stream)] = part.mixed
    return arrays


def per_pixel_arrays(arrays: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named arrays that every stream shares (labels and codes), without the x_m ones."""
    return {name: a for name, a in arrays.items() if "@" not in name}


def array_names(active: set[str], stream: int) -> list[str]:
    """The stored arrays the `active` terms read from a store, for mask stream `stream`."""
    names = []
    for name, need in needed(active).items():
        if need["pixel"]:
            names += [_pixel_name(name, b, k) for b in PIXEL_BATCHES for k in ("label", "code")]
        if need["mixed"]:
            names.append(_mixed_name(name, stream))
    return names


def from_arrays(arrays: dict[str, torch.Tensor], stream: int) -> Targets:
    """The Targets of mask stream `stream` from a store's named arrays (array_names')."""
    parts = {}
    for name in TEACHERS:
        pixel = {
            b: PixelTargets(arrays[label], arrays[_pixel_name(name, b, "code")])
            for b in PIXEL_BATCHES
            if (label := _pixel_name(name, b, "label")) in arrays
        }
        mixed = arrays.get(_mixed_name(name, stream))
        if pixel or mixed is not None:
            parts[name] = TeacherTargets(**pixel, mixed=mixed)
    return Targets(**parts)
