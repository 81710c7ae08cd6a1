"""The checks of a study's options that read the file system or load files (torch), in one step
(`validate`) that plan.plan_study runs before Ray starts and before anything is written:
StudyConfig itself checks only values.

Also here: what must match for --resume to continue the study an --output-dir holds
(`study_identity`, `check_study_folder`).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from ..config import TEACHER_DEEP, TEACHER_WIDE
from ..data import NUM_CLASSES
from ..engine.distill import load_teacher
from ..schema import read_json_object
from .study_config import StudyConfig


def validate(cfg: StudyConfig) -> dict[str, Any] | None:
    """Every check of `cfg` against the file system: the data folder, the given files and
    folders, both given teacher files (loaded), and the results folder (check_study_folder, whose
    study.json it returns on --resume). Raises naming the option and what was expected."""
    if cfg.data.dataset != "synthetic" and not os.path.isdir(cfg.data.data_root):
        raise FileNotFoundError(f"--data-root {cfg.data.data_root}: no such folder")
    options = cfg.options()
    for name in (
        "teacher_deep_checkpoint",
        "teacher_wide_checkpoint",
        "split_dir",
        "pretrained_dir",
    ):
        path = options[name]
        if path and "://" not in path and not os.path.exists(path):
            raise FileNotFoundError(f"--{name.replace('_', '-')} {path}: no such file or folder")
    check_teachers(cfg)  # a corrupt teacher file would otherwise fail every trial in its worker
    return check_study_folder(cfg)


# What must match for --resume to continue a study rather than start a different one.
_IDENTITY = (
    "dataset",
    "data_root",
    "protocols",
    "student",
    "num_samples",
    "seeds",
    "iterations",
    "teacher_iterations",
    "crop_size",
    "batch_size",
    "seed",
    "ablation",
    "ablation_variants",
)


def study_identity(cfg: StudyConfig) -> dict[str, Any]:
    """The options study.json keeps under "identity" (tuples as lists, as JSON reads them back)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in cfg.options().items()
        if k in _IDENTITY
    }


def check_study_folder(cfg: StudyConfig) -> dict[str, Any] | None:
    """The study.json of --output-dir when --resume continues it (None for a new study); raise when
    the folder already holds a study and --resume is not given, when --resume finds none, or when
    the study was started with other options. Reads only: a folder that holds a study is never
    reused silently."""
    path = os.path.join(cfg.storage.output_dir, "study.json")
    if not os.path.exists(path):
        if cfg.storage.resume:
            raise FileNotFoundError(f"--resume: {path} does not exist; nothing to resume")
        return None
    if not cfg.storage.resume:
        raise FileExistsError(
            f"{cfg.storage.output_dir} already holds a study (study.json): pass --resume to "
            f"continue it, or choose another --output-dir"
        )
    study = read_json_object(path)
    changed = {
        k: (study["identity"].get(k), v)
        for k, v in study_identity(cfg).items()
        if study["identity"].get(k) != v
    }
    if changed:
        raise ValueError(
            f"--resume: {path} was started with different options (option: (study, now)): "
            f"{changed}"
        )
    return study


def check_teachers(cfg: StudyConfig) -> None:
    """Both teacher files given on the command line, loaded (weights only) here on the driver: a
    corrupt file would otherwise fail every trial in its worker. Remote (s3://) files are left to
    the workers."""
    num_classes = NUM_CLASSES[cfg.data.dataset]
    for option, arch, path in (
        ("--teacher-deep-checkpoint", TEACHER_DEEP, cfg.teachers.deep_checkpoint),
        ("--teacher-wide-checkpoint", TEACHER_WIDE, cfg.teachers.wide_checkpoint),
    ):
        if not path or "://" in path:
            continue
        try:
            load_teacher(
                arch,
                num_classes,
                path,
                option.lstrip("-").replace("-", "_"),
                torch.device("cpu"),
                train_mode=False,
            )
        except FileNotFoundError:
            raise
        except (
            Exception
        ) as error:  # a corrupt file: torch's unpickler errors say "please file an issue"
            detail = (
                str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            )
            raise ValueError(
                f"{option} {path}: expected a {arch} state dict with {num_classes} classes "
                f"(a model.pt from a teacher run); could not load it: {detail}"
            ) from error
