"""Checks of study inputs that the workers would otherwise be first to trip over, made on the
driver before Ray starts and before anything is written to OUTPUT_DIR."""
from __future__ import annotations

import torch

from ..config import TEACHER_DEEP, TEACHER_WIDE
from ..data import NUM_CLASSES
from ..engine.distill import load_teacher


def check_teacher_checkpoint(path: str, arch: str, num_classes: int, option: str) -> None:
    """Raise ValueError naming `option` unless `path` loads (weights only) as a state dict of a
    `arch` network with `num_classes` classes. Remote (s3://) files are left to the workers."""
    if "://" in path:
        return
    try:
        load_teacher(arch, num_classes, path, option.lstrip("-").replace("-", "_"), torch.device("cpu"),
                     train_mode=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # a corrupt file: torch's unpickler errors say "please file an issue"
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{option} {path}: expected a {arch} state dict with {num_classes} classes "
                         f"(a model.pt from a teacher run); could not load it: {detail}") from error


def check_teachers(cfg) -> None:
    """Both teacher files of a StudyConfig, when given."""
    num_classes = NUM_CLASSES[cfg.dataset]
    for option, arch, path in (("--teacher-deep-checkpoint", TEACHER_DEEP, cfg.teacher_deep_checkpoint),
                               ("--teacher-wide-checkpoint", TEACHER_WIDE, cfg.teacher_wide_checkpoint)):
        if path:
            check_teacher_checkpoint(path, arch, num_classes, option)


def check_protocols_unique(protocols) -> None:
    repeated = sorted({p for p in protocols if list(protocols).count(p) > 1})
    if repeated:
        raise ValueError(f"--protocols {' '.join(protocols)}: {', '.join(repeated)} given more than once "
                         f"(one study per protocol)")
