"""Read a study's results folder into one DataFrame of trials (one row per trial file).

The study may still be running: a trial file that is half-written, unreadable or lacks the keys
every table needs is skipped with a warning naming it, so the report shows what exists.
"""
from __future__ import annotations

import glob
import math
import os
import warnings
from typing import Any

import pandas as pd

from mgd_ray.config import PROTOCOLS
from mgd_ray.schema import KINDS, NUMERIC_FIELDS, POINT_KEYS, STATUSES, TEXT_FIELDS, read_json_object

CONFIG_KEYS = POINT_KEYS  # a trial's config: its point, one column per key
NUMERIC = NUMERIC_FIELDS
TEXT = TEXT_FIELDS
# Every column a trials frame has after `normalize_trials`, in this order.
TRIAL_COLUMNS = TEXT[:5] + ("seed",) + CONFIG_KEYS + (
    "miou", "best_miou", "kept_fraction", "iteration", "max_iterations", "device", "num_devices",
    "wall_s", "device_hours", "restarts", "nodes", "started_at", "ended_at", "error", "diverged", "history")
REQUIRED = ("trial_id", "protocol", "kind", "status")


class ReportInputError(ValueError):
    """A results folder or trials frame that cannot be reported on (names what was expected)."""


def finite_or_none(value: Any) -> float | None:
    """float(value) when it is a finite number, else None (missing, NaN, inf, not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trial_row(record: dict[str, Any]) -> dict[str, Any]:
    """Flatten one trial JSON record (its "config" dict inlined) into a frame row."""
    missing = [key for key in REQUIRED if record.get(key) in (None, "")]
    if missing:
        raise ReportInputError(f"missing key(s) {missing}; expected {list(REQUIRED)}")
    if record["status"] not in STATUSES:
        raise ReportInputError(f"status {record['status']!r}: expected one of {list(STATUSES)}")
    if record["kind"] not in KINDS:
        raise ReportInputError(f"kind {record['kind']!r}: expected one of {list(KINDS)}")
    row = {key: record.get(key) for key in TRIAL_COLUMNS if key not in CONFIG_KEYS}
    config = record.get("config") or {}
    if not isinstance(config, dict):
        raise ReportInputError(f"config {config!r}: expected an object with {list(CONFIG_KEYS)}")
    for key in CONFIG_KEYS:
        row[key] = config.get(key)
    history = record.get("history") or []
    row["history"] = history if isinstance(history, list) else []
    # "miou" is the last evaluation's; a trial stopped between writes may only have its history.
    if finite_or_none(row.get("miou")) is None:
        last = [h.get("miou") for h in row["history"] if isinstance(h, dict)]
        last = [m for m in last if finite_or_none(m) is not None]
        row["miou"] = last[-1] if last else None
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
            raise ReportInputError(f"trials column {column!r} has {bad or ['missing values']}; "
                                   f"expected one of {list(allowed)}")
    frame["history"] = [h if isinstance(h, list) else [] for h in frame["history"]]
    frame["diverged"] = [d if isinstance(d, dict) else None for d in frame["diverged"]]
    return frame[list(TRIAL_COLUMNS)].reset_index(drop=True)


def load_trials(results_dir: str) -> pd.DataFrame:
    """All RESULTS_DIR/trials/*/*.json files as a normalised frame (empty frame when none)."""
    rows = []
    for path in sorted(glob.glob(os.path.join(results_dir, "trials", "*", "*.json"))):
        try:
            rows.append(trial_row(read_json_object(path)))
        except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
            warnings.warn(f"skipping trial file {path}: {err}", stacklevel=2)
    frame = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    return normalize_trials(frame)


def load_study(results_dir: str) -> dict[str, Any]:
    """RESULTS_DIR/study.json as a dict; {} with a warning if it is absent or unreadable."""
    if not os.path.isdir(results_dir):
        raise FileNotFoundError(f"results folder {results_dir!r} does not exist; expected the "
                                "RESULTS_DIR of a study (holding study.json and trials/)")
    path = os.path.join(results_dir, "study.json")
    try:
        return read_json_object(path)
    except (OSError, ValueError) as err:
        warnings.warn(f"study file {path} unreadable ({err}); reporting from the trial files only",
                      stacklevel=2)
        return {}


def study_protocols(study: dict[str, Any], trials: pd.DataFrame) -> list[str]:
    """The study's protocols in its own order, then any others found in trials (canonical order)."""
    listed = [p for p in study.get("protocols") or [] if p in PROTOCOLS]
    seen = set(trials["protocol"].dropna()) if "protocol" in trials else set()
    return list(dict.fromkeys(listed)) + [p for p in PROTOCOLS if p in seen and p not in listed]


def load_teachers(results_dir: str) -> dict[str, Any]:
    """RESULTS_DIR/teachers.json: {protocol: {"deep" | "wide": {"arch", "path", "miou",
    "size_bytes", ...}}} as the study wrote it; {} when absent or unreadable (an older study)."""
    path = os.path.join(results_dir, "teachers.json")
    if not os.path.exists(path):
        return {}
    try:
        return read_json_object(path)
    except (OSError, ValueError) as err:
        warnings.warn(f"teacher file {path} unreadable ({err}); teacher rows left empty", stacklevel=2)
        return {}


def teacher_mious(teachers: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """{protocol: {"deep": miou, "wide": miou}} from `load_teachers`' dict (None when unknown)."""
    return {protocol: {role: finite_or_none((entry or {}).get("miou")) for role, entry in roles.items()}
            for protocol, roles in teachers.items() if isinstance(roles, dict)}
