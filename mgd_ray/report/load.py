"""Read a study's results folder into one DataFrame of trials (one row per trial file).

The study may still be running: a trial file that is half-written, unreadable or lacks the keys
every table needs is skipped with a warning naming it, so the report shows what exists.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import pandas as pd

from mgd_ray.schema import (
    KINDS,
    POINT_KEYS,
    PROTOCOLS,
    RECORD_FIELDS,
    STATUSES,
    TrialRecord,
    finite_or_none,
    read_json_object,
    read_records,
)

CONFIG_KEYS = POINT_KEYS  # a trial's config: its point, one column per key
# Every column a trials frame has after `normalize_trials`, in this order: the record's fields
# with its config spread into one column per point key.
TRIAL_COLUMNS = (
    "trial_id",
    "protocol",
    "kind",
    "variant",
    "status",
    "seed",
    *CONFIG_KEYS,
) + tuple(
    f
    for f in RECORD_FIELDS
    if f not in ("trial_id", "protocol", "kind", "variant", "status", "seed", "config")
)
NUMERIC = CONFIG_KEYS + (
    "seed",
    "miou",
    "best_miou",
    "kept_fraction",
    "iteration",
    "max_iterations",
    "num_devices",
    "wall_s",
    "device_hours",
    "restarts",
    "world_size",
)


class ReportInputError(ValueError):
    """A results folder or trials frame that cannot be reported on (names what was expected)."""


def trial_row(record: TrialRecord) -> dict[str, Any]:
    """One trial record as a frame row: its fields, with its "config" spread into the point
    keys."""
    row = {key: value for key, value in record.to_json().items() if key != "config"}
    config = record.config or {}
    row.update({key: config.get(key) for key in CONFIG_KEYS})
    return row


def normalize_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Return a copy with every TRIAL_COLUMNS column (absent ones missing, numbers as float,
    non-finite numbers as NaN); raise ReportInputError on an unknown status, kind or protocol."""
    frame = trials.copy()
    for column in TRIAL_COLUMNS:
        if column not in frame.columns:
            frame[column] = None
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
        frame.loc[~frame[column].abs().lt(math.inf), column] = math.nan
    frame["variant"] = frame["variant"].where(frame["variant"].notna(), frame["kind"])
    for column, allowed in (("status", STATUSES), ("kind", KINDS), ("protocol", PROTOCOLS)):
        bad = sorted(set(frame[column].dropna().astype(str)) - set(allowed))
        if bad or frame[column].isna().any():
            raise ReportInputError(
                f"trials column {column!r} has {bad or ['missing values']}; "
                f"expected one of {list(allowed)}"
            )
    frame["history"] = [h if isinstance(h, list) else [] for h in frame["history"]]
    frame["diverged"] = [d if isinstance(d, dict) else None for d in frame["diverged"]]
    return frame[list(TRIAL_COLUMNS)].reset_index(drop=True)


def load_trials(results_dir: str) -> pd.DataFrame:
    """All RESULTS_DIR/trials/*/*.json records as a normalised frame (empty frame when none); a
    file that is not a readable record is skipped with a warning naming it."""

    def warn(path: str, error: Exception) -> None:
        warnings.warn(f"skipping trial file {path}: {error}", stacklevel=3)

    rows = [trial_row(record) for record in read_records(results_dir, on_skip=warn)]
    return normalize_trials(pd.DataFrame(rows, columns=list(TRIAL_COLUMNS)))


def load_study(results_dir: str) -> dict[str, Any]:
    """RESULTS_DIR/study.json as a dict; {} with a warning if it is absent or unreadable."""
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(
            f"results folder {results_dir!r} does not exist; expected the "
            "RESULTS_DIR of a study (holding study.json and trials/)"
        )
    path = os.path.join(results_dir, "study.json")
    try:
        return read_json_object(path)
    except (OSError, ValueError) as err:
        warnings.warn(
            f"study file {path} unreadable ({err}); reporting from the trial files only",
            stacklevel=2,
        )
        return {}


def study_protocols(study: dict[str, Any], trials: pd.DataFrame) -> list[str]:
    """The study's protocols in its own order, then any others found in trials (canonical
    order)."""
    listed = [p for p in study.get("protocols") or [] if p in PROTOCOLS]
    seen = set(trials["protocol"].dropna()) if "protocol" in trials else set()
    return list(dict.fromkeys(listed)) + [p for p in PROTOCOLS if p in seen and p not in listed]


def load_teachers(results_dir: str) -> dict[str, Any]:
    """RESULTS_DIR/teachers.json: {protocol: {"deep" | "wide": {"arch", "path", "miou",
    "size_bytes", ...}}} as the study wrote it; {} when absent or unreadable (an older study)."""
    return _listing(os.path.join(results_dir, "teachers.json"), "teacher rows left empty")


def load_targets(results_dir: str) -> dict[str, Any]:
    """RESULTS_DIR/targets.json: {protocol: {"store", "bytes", "wall_s", "deleted", ...}, or
    {"store", "fallback": error, "deleted"} when its writers failed}; {} when absent or
    unreadable (--teacher-targets live, an older study)."""
    return _listing(os.path.join(results_dir, "targets.json"), "teacher targets not reported")


def _listing(path: str, without: str) -> dict[str, Any]:
    if not os.path.exists(path):
        return {}
    try:
        return read_json_object(path)
    except (OSError, ValueError) as err:
        warnings.warn(f"{path} unreadable ({err}); {without}", stacklevel=3)
        return {}


def teacher_mious(teachers: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{protocol: {"deep": miou, "wide": miou}} from `load_teachers`' dict (None when unknown)."""
    return {
        protocol: {
            role: finite_or_none((entry or {}).get("miou")) for role, entry in roles.items()
        }
        for protocol, roles in teachers.items()
        if isinstance(roles, dict)
    }
