"""What the layers must agree on, and the one atomic file writer; plain Python, no
torch/ray/pandas.

The protocols and their file names, the loss terms and a trial's point, and the trial record with
its one reader and the rules every consumer applies to it (completed, best); losses, data and
metrics share IGNORE_INDEX.
"""

from __future__ import annotations

import glob
import json
import math
import os
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import IO, Any, Callable, Iterable

# The label value no loss or metric counts (VOC's object boundaries, Cityscapes' void classes).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class PointKey:
    """One key of a trial's flat point (a Tune config, a record's "config", the report's columns):
    a loss weight with the term it weighs, or the pseudo-label confidence threshold."""

    key: str
    label: str  # the report's name for it, the paper's
    tex: str  # the same in LaTeX tables
    term: str | None = None  # the weighed loss term: a LossWeights field, a step's loss dict key
    bounds: tuple[float, float] | None = None  # what the search samples; None: not searched
    log: bool = False  # sampled (and its importance read) on a log scale


# The one table of a trial's point, in the order the search suggests it. Bounds: two decades
# either side of the paper's lambda_I / lambda_R, a factor 4 either side of w_P = 1, the threshold
# in [0, 0.99] (0 is the paper's); w_sup stays 1, as in the paper.
POINT = (
    PointKey("w_sup", "w_sup", r"$w_\mathrm{sup}$", term="sup"),
    PointKey("w_pixel", "w_P", r"$w_P$", term="pixel", bounds=(0.25, 4.0), log=True),
    PointKey(
        "lambda_semantic", "lambda_I", r"$\lambda_I$", "semantic", bounds=(1e-5, 1e-1), log=True
    ),
    PointKey("lambda_region", "lambda_R", r"$\lambda_R$", "region", bounds=(1.0, 1e4), log=True),
    PointKey("confidence_threshold", "tau", r"$\tau$", bounds=(0.0, 0.99)),
)
# Views of POINT the layers read.
WEIGHT_KEYS = {p.term: p.key for p in POINT if p.term}  # loss term -> its weight's point key
LOSS_TERMS = tuple(WEIGHT_KEYS)
THRESHOLD_KEY = "confidence_threshold"
POINT_KEYS = tuple(p.key for p in POINT)
SEARCH_BOUNDS = {p.key: p.bounds for p in POINT if p.bounds}
LOG_SCALE = tuple(p.key for p in POINT if p.log)
# Rows of the ablation table, in the order the table shows them, each with the MGD terms it
# switches on beside the supervised one, at the paper's weights and threshold (None: "mgd_best",
# the best point the search found).
ABLATION_TERMS: dict[str, tuple[str, ...] | None] = {
    "supervised": (),
    "pixel": ("pixel",),
    "pixel_semantic": ("pixel", "semantic"),
    "pixel_region": ("pixel", "region"),
    "mgd_paper": ("pixel", "semantic", "region"),
    "mgd_best": None,
}
ABLATION_VARIANTS = tuple(ABLATION_TERMS)

# The partition protocols a study can run: the labeled share of the training set.
PROTOCOLS = ("1/16", "1/8", "1/4", "1/2", "full")


def check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    return protocol


def protocol_slug(protocol: str) -> str:
    """ "1/8" -> "1_8" (file and study names); "full" stays "full"."""
    check_protocol(protocol)
    return protocol.replace("/", "_")


def finite_or_none(value: Any) -> float | None:
    """float(value) when it is a finite number, else None (missing, NaN, inf, not a number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


STATUSES = ("running", "completed", "early_stopped", "failed")
KINDS = ("search", "ablation")
FINISHED = ("completed", "early_stopped", "failed")  # a trial that will not run again


@dataclass
class TrialRecord:
    """One trial, as RESULTS_DIR/trials/<protocol_slug>/<trial_id>.json holds it: written by the
    study as the trial starts, reports and ends (distributed/records.py), read by `read_records`
    for everything else (export, the study's next phase, the report, the benchmarks)."""

    trial_id: str
    protocol: str
    kind: str  # KINDS
    variant: str  # "search", or the ablation row (ABLATION_VARIANTS)
    seed: int
    config: dict[str, float]  # the trial's point, by POINT_KEYS
    max_iterations: int
    device: str  # "cpu" | "gpu"
    num_devices: float  # devices the trial holds (a fraction when trials share a GPU)
    status: str = "running"  # STATUSES
    error: str | None = None  # the line that says what went wrong
    error_detail: str | None = None  # the end of the traceback
    # why the searcher could not tell Optuna how this trial ended (TPE then never learnt it)
    optuna_error: str | None = None
    # None, or {"iteration": int, "losses": {"loss" / "loss_<term>": number, or "nan" / "inf"}}
    diverged: dict[str, Any] | None = None
    miou: float | None = None  # of the last evaluation
    best_miou: float | None = None
    kept_fraction: float | None = None
    iteration: int | None = None  # of the last evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # {"iteration", "miou", ...}
    wall_s: float = 0.0  # over every driver session that ran it
    device_hours: float = 0.0
    restarts: int = 0  # Ray Train restarts of its run (a lost worker, a resumed driver)
    nodes: list[str] = field(default_factory=list)  # the nodes its rank 0 ran on
    world_size: int | None = None
    checkpoint_path: str | None = None  # where the weights that scored `miou` are
    run_start: str | None = None  # the id of its worker group's latest start
    started_at: str | None = None
    ended_at: str | None = None
    # A search trial's place in the searcher's order of points (0: the first suggested, the
    # paper's): what breaks a tie between equal scores the same way in every run.
    search_order: int | None = None

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> "TrialRecord":
        """The record of a JSON object; ValueError naming what is missing or not allowed."""
        required = ("trial_id", "protocol", "kind", "status")
        missing = [key for key in required if payload.get(key) in (None, "")]
        if missing:
            raise ValueError(f"missing key(s) {missing}; expected {list(required)}")
        for key, allowed in (("status", STATUSES), ("kind", KINDS), ("protocol", PROTOCOLS)):
            if payload[key] not in allowed:
                raise ValueError(f"{key} {payload[key]!r}: expected one of {list(allowed)}")
        if not isinstance(payload.get("config") or {}, dict):
            raise ValueError(
                f"config {payload['config']!r}: expected an object with {list(POINT_KEYS)}"
            )
        known = {f.name for f in fields(cls)}
        values = {
            key: value for key, value in payload.items() if key in known and value is not None
        }
        values.setdefault("variant", payload["kind"])
        for key in ("seed", "max_iterations", "device", "num_devices", "config"):
            values.setdefault(key, None)
        record = cls(**values)
        # a trial stopped between writes may have its history only
        if finite_or_none(record.miou) is None:
            scored = [h.get("miou") for h in record.history if isinstance(h, dict)]
            scored = [m for m in scored if finite_or_none(m) is not None]
            record.miou = scored[-1] if scored else None
        return record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


RECORD_FIELDS = tuple(f.name for f in fields(TrialRecord))


def read_records(
    results_dir: str | os.PathLike,
    protocol: str | None = None,
    on_skip: Callable[[str, Exception], None] | None = None,
) -> list[TrialRecord]:
    """The trial records of a results folder (of one protocol when given), in file-name order.
    A file that is half-written, unreadable or not a record is skipped (a running study has
    such files); `on_skip(path, error)` hears of each."""
    folder = protocol_slug(protocol) if protocol is not None else "*"
    records = []
    for path in sorted(
        glob.glob(os.path.join(os.fspath(results_dir), "trials", folder, "*.json"))
    ):
        try:
            records.append(TrialRecord.from_json(read_json_object(path)))
        except (OSError, ValueError, TypeError) as error:
            if on_skip is not None:
                on_skip(path, error)
    return records


def reached_the_end(iteration: Any, max_iterations: int) -> bool:
    """Whether a run reported from its last iteration: what tells a finished trial from one that
    was stopped early."""
    return iteration is not None and int(iteration) >= int(max_iterations)


def is_completed(record) -> bool:
    """A trial that ran its whole budget and has a final mIoU: the only kind whose score ranks.
    `record`: a TrialRecord, or anything with its attributes (a trials frame's itertuples())."""
    return record.status == "completed" and finite_or_none(record.miou) is not None


def ranked_trials(records: Iterable, kind: str | None = None, variant: str | None = None) -> list:
    """The completed trials (of `kind` / `variant` when given), best final mIoU first; on a tie
    the one whose point the searcher suggested first, then by its point. Never by Tune's trial
    ids (random) or start times (trials in flight side by side start in either order): a tie
    broken so would pick another trial in each run of the same study."""
    chosen = [
        r
        for r in records
        if is_completed(r) and kind in (None, r.kind) and variant in (None, r.variant)
    ]

    def tie_break(r) -> tuple[float, str, str]:
        point = getattr(r, "config", None) or {k: getattr(r, k, None) for k in POINT_KEYS}
        order = finite_or_none(getattr(r, "search_order", None))
        return (
            math.inf if order is None else order,
            json.dumps(point, sort_keys=True, default=str),
            str(r.trial_id),
        )

    return sorted(sorted(chosen, key=tie_break), key=lambda r: -float(r.miou))


def best_trial(records: Iterable, kind: str | None = None, variant: str | None = None):
    """The best trial of `ranked_trials`, or None when no trial completed."""
    ranked = ranked_trials(records, kind, variant)
    return ranked[0] if ranked else None


def read_json_object(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in `path`; OSError when unreadable, ValueError when not JSON or not an
    object."""
    with open(path) as f:
        payload = json.load(f)
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    return payload


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], binary: bool = True
) -> None:
    """Call `write(f)` on a temporary file in `path`'s folder (created if missing), fsync it and
    rename it over `path` (os.replace: atomic within one file system), so a reader, or a run killed
    mid-write, sees the old file or the complete new one; on any failure the temporary file is
    removed. Text mode (UTF-8) when not binary."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # os.open with 0o666 honours the umask as open() does (mkstemp would make every file 0600).
    tmp = os.path.join(
        folder, f".{os.path.basename(path)}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    )
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as f:
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
