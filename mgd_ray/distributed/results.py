"""The results folder's own files: study.json (what the study is, checked on --resume),
teachers.json and targets.json (where each protocol's teachers and teacher targets are, what they
cost), read back by the phases and the report."""

from __future__ import annotations

import os
from typing import Any

from ..config import TEACHER_DEEP, TEACHER_WIDE
from ..data import NUM_CLASSES
from ..schema import FINISHED, read_json_object, read_records, write_json_atomic
from .records import now_iso
from .study_config import StudyConfig
from .validate import check_study_folder, study_identity

TARGETS_JSON = "targets.json"  # each protocol's store of teacher targets, its cost and size
TEACHERS_JSON = "teachers.json"  # each protocol's teachers: where, their size and val mIoU


def open_study_folder(
    cfg: StudyConfig, iterations: dict[str, int] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write study.json for a new study, or check it against the config on --resume
    (validate.check_study_folder). A folder that already holds a study is never reused silently."""
    study = check_study_folder(cfg)
    if study is not None:
        return study
    study = {
        "dataset": cfg.data.dataset,
        "protocols": list(cfg.budget.protocols),
        "student": cfg.student,
        "teacher_deep": TEACHER_DEEP,
        "teacher_wide": TEACHER_WIDE,
        "num_classes": NUM_CLASSES[cfg.data.dataset],
        "iterations": iterations or cfg.budget.iterations,
        "created": now_iso(),
        "device": cfg.cluster.device,
        "devices_per_trial": cfg.cluster.devices_per_trial,
        "pretrained": cfg.data.pretrained,
        "identity": study_identity(cfg),
        **(extra or {}),
    }
    write_json_atomic(os.path.join(cfg.storage.output_dir, "study.json"), study)
    return study


def study_json(cfg: StudyConfig) -> dict[str, Any]:
    return read_json_object(os.path.join(cfg.storage.output_dir, "study.json"))


def teachers_json(cfg: StudyConfig) -> dict[str, Any]:
    return json_or_empty(os.path.join(cfg.storage.output_dir, TEACHERS_JSON))


def targets_json(cfg: StudyConfig) -> dict[str, Any]:
    return json_or_empty(os.path.join(cfg.storage.output_dir, TARGETS_JSON))


def write_listing(cfg: StudyConfig, name: str, listing: dict[str, Any]) -> None:
    """Rewrite RESULTS_DIR/`name` (TEACHERS_JSON, TARGETS_JSON) atomically."""
    write_json_atomic(os.path.join(cfg.storage.output_dir, name), listing)


def json_or_empty(path: str) -> dict[str, Any]:
    return read_json_object(path) if os.path.exists(path) else {}


def finished_trials(cfg: StudyConfig) -> int:
    """Trials already finished in RESULTS_DIR (before a --resume)."""
    return sum(
        r.status in FINISHED
        for protocol in cfg.budget.protocols
        for r in read_records(cfg.storage.output_dir, protocol)
    )
