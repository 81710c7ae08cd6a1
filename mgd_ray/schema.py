"""Names two layers must agree on, and the one atomic file writer; plain Python, no torch/ray/pandas.

`distributed/` writes trial records with these fields and points with these keys; `report/` reads
them back by the same names. Losses, data and metrics share IGNORE_INDEX.
"""
from __future__ import annotations

import json
import os
import secrets
from typing import IO, Any, Callable

# The label value no loss or metric counts (VOC's object boundaries, Cityscapes' void classes).
IGNORE_INDEX = 255

# Loss-term names: LossWeights' fields, the keys of a step's loss dict, "loss_<term>" in reports.
LOSS_TERMS = ("sup", "pixel", "semantic", "region")

# A trial's flat point: the four loss weights and the confidence threshold.
POINT_KEYS = ("w_sup", "w_pixel", "lambda_semantic", "lambda_region", "confidence_threshold")
# Rows of the ablation table, in the order the table shows them.
ABLATION_VARIANTS = ("supervised", "pixel", "pixel_semantic", "pixel_region", "mgd_paper", "mgd_best")

# A trial record (RESULTS_DIR/trials/<protocol_slug>/<trial_id>.json): its status and kind values,
# and its fields ("config" holds the POINT_KEYS, "history" the reported results, "diverged" is None
# or {"iteration": int, "losses": {"loss" / "loss_<term>": number, or "nan" / "inf" when not finite}},
# "restarts" counts Ray Train restarts of the run after a worker failure, "nodes" the nodes it ran on).
STATUSES = ("running", "completed", "early_stopped", "failed")
KINDS = ("search", "ablation")
RECORD_FIELDS = ("trial_id", "protocol", "kind", "variant", "seed", "status", "error", "diverged", "config",
                 "miou", "best_miou", "kept_fraction", "iteration", "max_iterations", "history",
                 "device", "num_devices", "wall_s", "device_hours", "restarts", "nodes", "started_at",
                 "ended_at")
# The record's fields by type, as a trials frame holds them (the point keys as columns).
NUMERIC_FIELDS = POINT_KEYS + ("seed", "miou", "best_miou", "kept_fraction", "iteration",
                               "max_iterations", "num_devices", "wall_s", "device_hours", "restarts")
TEXT_FIELDS = ("trial_id", "protocol", "kind", "variant", "status", "error", "device",
               "started_at", "ended_at")


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`; OSError when unreadable, ValueError when not JSON or not an object."""
    with open(path) as f:
        payload = json.load(f)
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    return payload


def atomic_write(path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True) -> None:
    """Call `write(f)` on a temporary file in `path`'s folder (created if missing), fsync it and
    rename it over `path` (os.replace: atomic within one file system), so a reader, or a run killed
    mid-write, sees the old file or the complete new one; on any failure the temporary file is
    removed. Text mode (UTF-8) when not binary."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # os.open with 0o666 honours the umask as open() does (mkstemp would make every file 0600).
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> str:
    """Write `text` (UTF-8) to `path` atomically; return the path."""
    atomic_write(path, lambda f: f.write(text), binary=False)
    return os.fspath(path)


def write_json_atomic(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write `payload` as JSON (indent 1, NaN refused) to `path` atomically."""
    atomic_write(path, lambda f: json.dump(payload, f, indent=1, allow_nan=False), binary=False)
