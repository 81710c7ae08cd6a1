"""One JSON record per trial, kept on the driver as trials start, report, end or fail.

RESULTS_DIR/trials/<protocol_slug>/<trial_id>.json is rewritten atomically after every event, so a
study killed at any point leaves readable records of everything so far; `mgd_ray.report` reads them.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import time
from typing import Any

from ray.tune import Callback

from ..config import protocol_slug
from ..report.load import finite_or_none
from ..schema import POINT_KEYS, write_json_atomic


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def trial_point(config: dict[str, Any]) -> tuple[str, int, dict[str, float]]:
    """(variant, seed, point) of a trial's Tune config (search or ablation)."""
    if "ablation" in config:
        ablation = config["ablation"]
        return ablation["variant"], int(ablation["seed"]), {k: float(ablation[k]) for k in POINT_KEYS}
    point = {k: float(config[k]) for k in POINT_KEYS if k in config}
    point.setdefault("w_sup", 1.0)
    return "search", int(config["run"]["distill"]["seed"]), point


def error_summary(text: str) -> str:
    """The line of a (nested Ray) traceback that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "diverged at iteration" in line:
            return line[line.index("diverged at iteration"):]
    errors = [i for i, line in enumerate(lines) if "Error" in line.split(":")[0]]
    if not errors:
        return (lines[-1] if lines else "unknown error")[:500]
    summary = lines[errors[-1]]
    if summary.endswith(":") and errors[-1] + 1 < len(lines):
        # Ray's wrappers end in a colon and give the cause on the next line ("ray.train.ControllerError:
        # Training failed due to controller error:" / "The worker group startup timed out after ...").
        summary += " " + lines[errors[-1] + 1]
    return summary[:500]


class TrialRecorder(Callback):
    """Tune callback writing the per-trial records of one Tune run (one protocol, one kind)."""

    def __init__(self, results_dir: str, protocol: str, kind: str, max_iterations: int,
                 device: str, num_devices: int, verbose: bool = True) -> None:
        self.folder = os.path.join(results_dir, "trials", protocol_slug(protocol))
        self.protocol, self.kind, self.max_iterations = protocol, kind, max_iterations
        self.device, self.num_devices, self.verbose = device, num_devices, verbose
        self._started: dict[str, float] = {}

    def _path(self, trial) -> str:
        return os.path.join(self.folder, f"{trial.trial_id}.json")

    def _load(self, trial) -> dict[str, Any]:
        try:
            with open(self._path(trial)) as f:
                return json.load(f)
        except (OSError, ValueError):
            variant, seed, point = trial_point(trial.config)
            return {"trial_id": trial.trial_id, "protocol": self.protocol, "kind": self.kind,
                    "variant": variant, "seed": seed, "status": "running", "error": None,
                    "config": point, "miou": None, "best_miou": None, "kept_fraction": None,
                    "iteration": None, "max_iterations": self.max_iterations, "history": [],
                    "device": self.device, "num_devices": self.num_devices, "wall_s": 0.0,
                    "device_hours": 0.0, "started_at": now_iso(), "ended_at": None}

    def _save(self, trial, record: dict[str, Any]) -> None:
        # Wall time accumulates over driver sessions (a resumed trial keeps its earlier time).
        start = self._started.get(trial.trial_id)
        if start is not None:
            now = time.time()
            record["wall_s"] = float(record.get("wall_s") or 0.0) + now - start
            self._started[trial.trial_id] = now
        record["device_hours"] = record["wall_s"] * self.num_devices / 3600.0
        write_json_atomic(self._path(trial), record)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._started[trial.trial_id] = time.time()
        record = self._load(trial)
        record["status"], record["error"], record["ended_at"] = "running", None, None
        self._save(trial, record)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._started.setdefault(trial.trial_id, time.time())
        record = self._load(trial)
        miou = finite_or_none(result.get("miou"))
        if miou is None:
            self._save(trial, record)
            return
        step = {"iteration": int(result.get("iteration", 0)), "miou": miou,
                "kept_fraction": finite_or_none(result.get("kept_fraction")), "loss": finite_or_none(result.get("loss"))}
        # A trial resumed from an earlier checkpoint reports some iterations again: keep the new ones.
        record["history"] = [h for h in record["history"] if h["iteration"] < step["iteration"]] + [step]
        record.update(miou=miou, iteration=step["iteration"], kept_fraction=step["kept_fraction"],
                      best_miou=max(miou, record.get("best_miou") or -math.inf),
                      world_size=result.get("world_size"),
                      # where the weights that scored `miou` are (models/ exports the best from it)
                      checkpoint_path=result.get("checkpoint_path") or record.get("checkpoint_path"))
        if result.get("node_id") and result["node_id"] not in record.setdefault("nodes", []):
            record["nodes"].append(result["node_id"])  # a run restarted on another node adds one
        if result.get("run_start") and result["run_start"] != record.get("run_start"):
            # The worker group started again (Ray Train after a lost worker, or --resume) from the last checkpoint.
            record["restarts"] = int(record.get("restarts") or 0) + (1 if record.get("run_start") else 0)
            record["run_start"] = result["run_start"]
        self._save(trial, record)

    def on_trial_complete(self, iteration, trials, trial, **info):
        record = self._load(trial)
        finished = (record.get("iteration") or 0) >= self.max_iterations
        record["status"] = "completed" if finished else "early_stopped"
        record["ended_at"] = now_iso()
        self._save(trial, record)
        self._started.pop(trial.trial_id, None)
        if self.verbose:
            print(f"[{self.protocol} {self.kind}] trial {trial.trial_id} ({record['variant']}, seed "
                  f"{record['seed']}) {record['status']}: mIoU {record['miou']} at iteration "
                  f"{record['iteration']}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        record = self._load(trial)
        text = ""
        if trial.error_file and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                text = f.read()
        record.update(status="failed", error=error_summary(text), error_detail=text[-4000:], ended_at=now_iso())
        self._save(trial, record)
        self._started.pop(trial.trial_id, None)
        if self.verbose:
            print(f"[{self.protocol} {self.kind}] trial {trial.trial_id} FAILED: {record['error']}", flush=True)
