"""One JSON record per trial, kept on the driver as trials start, report, end or fail.

RESULTS_DIR/trials/<protocol_slug>/<trial_id>.json is rewritten atomically after every event, so a
study killed at any point leaves readable records of everything so far; `mgd_ray.report` reads
them.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from typing import Any, Callable

from ray import cloudpickle
from ray.tune import Callback

from .. import storage
from ..engine import DivergedError
from ..schema import (
    TrialRecord,
    finite_or_none,
    protocol_slug,
    reached_the_end,
    read_json_object,
    write_json_atomic,
)
from .spec import from_tune


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def find_divergence(error: BaseException | None) -> DivergedError | None:
    """The DivergedError that ended a trial: Tune keeps the exception a trial raised (pickled with
    its fields) wrapped in Ray's task errors; None for any other end."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, DivergedError):
            # not Ray's wrapper that subclasses it
            return DivergedError(error.iteration, error.losses)
        error = getattr(error, "cause", None) or error.__cause__
    return None


def diverged_field(error: DivergedError) -> dict[str, Any]:
    """A record's "diverged": {"iteration", "losses"}; a non-finite loss is kept as its name
    ("nan", "inf"): a record is strict JSON."""
    return {
        "iteration": error.iteration,
        "losses": {k: v if math.isfinite(v) else str(v) for k, v in error.losses.items()},
    }


def error_summary(text: str) -> str:
    """The line of a (nested Ray) traceback that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [i for i, line in enumerate(lines) if "Error" in line.split(":")[0]]
    if not errors:
        return (lines[-1] if lines else "unknown error")[:500]
    summary = lines[errors[-1]]
    if summary.endswith(":") and errors[-1] + 1 < len(lines):
        # Ray's wrappers end in a colon and give the cause on the next line
        # ("ray.train.ControllerError: Training failed due to controller error:" / "The worker
        # group startup timed out after ...").
        summary += " " + lines[errors[-1] + 1]
    return summary[:500]


class TrialRecorder(Callback):
    """Tune callback writing the per-trial records of one Tune run (one protocol, one kind)."""

    def __init__(
        self,
        results_dir: str,
        protocol: str,
        kind: str,
        max_iterations: int,
        device: str,
        num_devices: float,
        verbose: bool = True,
        search_order: Callable[[str], int | None] | None = None,
    ) -> None:
        self.folder = os.path.join(results_dir, "trials", protocol_slug(protocol))
        self.search_order = search_order  # the searcher's order of a trial's point (search)
        self.protocol, self.kind, self.max_iterations = protocol, kind, max_iterations
        self.device, self.num_devices, self.verbose = device, num_devices, verbose
        self._started: dict[str, float] = {}

    def _path(self, trial) -> str:
        return os.path.join(self.folder, f"{trial.trial_id}.json")

    def _load(self, trial) -> TrialRecord:
        try:
            return TrialRecord.from_json(read_json_object(self._path(trial)))
        except (OSError, ValueError):
            this = from_tune(trial.config)
            return TrialRecord(
                trial_id=trial.trial_id,
                protocol=self.protocol,
                kind=self.kind,
                variant=this.variant,
                seed=this.seed,
                config=this.point.to_tune(),
                max_iterations=self.max_iterations,
                device=self.device,
                num_devices=self.num_devices,
                started_at=now_iso(),
                search_order=self.search_order(trial.trial_id) if self.search_order else None,
            )

    def _save(self, trial, record: TrialRecord) -> None:
        # Wall time accumulates over driver sessions (a resumed trial keeps its earlier time).
        start = self._started.get(trial.trial_id)
        if start is not None:
            now = time.time()
            record.wall_s += now - start
            self._started[trial.trial_id] = now
        record.device_hours = record.wall_s * self.num_devices / 3600.0
        write_json_atomic(self._path(trial), record.to_json())

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        record = self._load(trial)
        record.status, record.error, record.ended_at = "running", None, None
        self._save(trial, record)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._started.setdefault(trial.trial_id, time.time())
        record = self._load(trial)
        miou = finite_or_none(result.get("miou"))
        if miou is None:
            self._save(trial, record)
            return
        step = {
            "iteration": int(result.get("iteration", 0)),
            "miou": miou,
            "kept_fraction": finite_or_none(result.get("kept_fraction")),
            "loss": finite_or_none(result.get("loss")),
        }
        # A trial resumed from an earlier checkpoint reports some iterations again: keep the new
        # ones.
        record.history = [h for h in record.history if h["iteration"] < step["iteration"]] + [step]
        checkpoint = result.get("checkpoint_path")
        # where the weights that scored `miou` are (models/ exports the best from it)
        if checkpoint:
            record.checkpoint_path = storage.as_uri(
                checkpoint, from_tune(trial.config).spec.run.storage_path
            )
        record.miou, record.iteration, record.kept_fraction = (
            miou,
            step["iteration"],
            step["kept_fraction"],
        )
        record.best_miou = max(
            miou, record.best_miou if record.best_miou is not None else -math.inf
        )
        record.world_size = result.get("world_size")
        if result.get("node_id") and result["node_id"] not in record.nodes:
            record.nodes.append(result["node_id"])  # a run restarted on another node adds one
        if result.get("run_start") and result["run_start"] != record.run_start:
            # The worker group started again (Ray Train after a lost worker, or --resume) from the
            # last checkpoint.
            record.restarts += 1 if record.run_start else 0
            record.run_start = result["run_start"]
        self._save(trial, record)

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._load(trial)
        record.status = (
            "completed"
            if reached_the_end(record.iteration, self.max_iterations)
            else "early_stopped"
        )
        record.ended_at = now_iso()
        self._save(trial, record)
        self._started.pop(trial.trial_id, None)
        if self.verbose:
            print(
                f"[{self.protocol} {self.kind}] trial {trial.trial_id} ({record.variant}, seed "
                f"{record.seed}) {record.status}: mIoU {record.miou} at iteration "
                f"{record.iteration}",
                flush=True,
            )

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._load(trial)
        text = ""
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                text = f.read()
        diverged = find_divergence(_pickled_error(trial))
        record.status, record.ended_at, record.error_detail = "failed", now_iso(), text[-4000:]
        record.error = str(diverged) if diverged else error_summary(text)
        record.diverged = diverged_field(diverged) if diverged else None
        self._save(trial, record)
        self._started.pop(trial.trial_id, None)
        if self.verbose:
            print(
                f"[{self.protocol} {self.kind}] trial {trial.trial_id} FAILED: {record.error}",
                flush=True,
            )


def record_untold(results_dir: str, protocol: str, trial_id: str, error: str) -> None:
    """Write into a search trial's record that Optuna could not be told how it ended
    (HonestOptunaSearch's on_untold)."""
    path = os.path.join(results_dir, "trials", protocol_slug(protocol), f"{trial_id}.json")
    try:
        record = TrialRecord.from_json(read_json_object(path))
    except (OSError, ValueError):  # no record yet: the recorder writes the trial's own later
        return
    record.optuna_error = error
    write_json_atomic(path, record.to_json())


def _pickled_error(trial) -> BaseException | None:
    """The exception Tune kept for a failed trial, in the file beside its error text (None when it
    kept none or it cannot be read)."""
    path = getattr(trial, "pickled_error_file", None)
    if not path or not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 -- an unpicklable error leaves its text only
        return None
