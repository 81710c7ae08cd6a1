"""What one trial is, typed: what it trains, where it stores, how it scales.

The study builds one `TrialSpec` per protocol once its teachers exist, and never changes it. Tune
hands a trial a plain dict: `param_space` makes that dict (the spec under "run", plus the searcher's
point or the ablation row), and `from_tune` is the one place that reads it back, for the trial's
driver (trial.py), the Train workers (worker.py) and the trial records (records.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from ray import tune

from ..config import DistillConfig
from .space import SearchPoint

SPEC_KEY = "run"  # a trial config's spec
ABLATION_KEY = "ablation"  # an ablation trial's row: {"variant", "seed", POINT_KEYS...}


@dataclass(frozen=True)
class TrainRun:
    """How one Ray Train run (a teacher's or a trial's) scales and where it keeps its checkpoints."""

    storage_path: str  # <storage>/<study name>: the Train run folders
    workers: int = 1
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0  # a fraction when trials share a GPU (--trials-per-gpu)
    max_failures: int = 1  # Train restarts from the last checkpoint after a worker failure
    worker_start_timeout_s: float = 600.0  # a worker group not started by then is retried ...
    worker_start_retries: int = 2  # ... this many times, then the run fails (cluster.py)
    log_level: str = "WARNING"  # Ray Train's console level

    def scaling(self) -> dict[str, float]:
        """{"workers", "cpus_per_worker", "gpus_per_worker"} (cluster.check_trial_fits)."""
        return {"workers": self.workers, "cpus_per_worker": self.cpus_per_worker,
                "gpus_per_worker": self.gpus_per_worker}


@dataclass(frozen=True)
class TrialSpec:
    """Everything the trials of one protocol share: the base DistillConfig (data, schedule, recipe,
    teacher and ImageNet files, the paper's weights and threshold, the study seed) and the TrainRun.
    A trial changes its point and seed only."""

    distill: DistillConfig
    run: TrainRun

    @property
    def protocol(self) -> str:
        return self.distill.data.protocol

    @property
    def paper_point(self) -> SearchPoint:
        return SearchPoint(self.distill.weights, self.distill.confidence_threshold)

    def to_tune(self) -> dict[str, Any]:
        run = dataclasses.asdict(self.run)
        scaling = {key: run.pop(key) for key in ("workers", "cpus_per_worker", "gpus_per_worker")}
        return {"distill": self.distill.to_dict(), **run, "scaling": scaling}

    @classmethod
    def from_tune(cls, run: Mapping[str, Any]) -> "TrialSpec":
        run = dict(run)
        distill, scaling = run.pop("distill"), run.pop("scaling")
        return cls(DistillConfig.from_dict(distill), TrainRun(**run, **scaling))


@dataclass(frozen=True)
class Trial:
    """One trial as its Tune config says: the spec, the point it trains, its variant and seed."""

    spec: TrialSpec
    point: SearchPoint
    variant: str  # "search", or the ablation row
    seed: int

    @property
    def distill(self) -> DistillConfig:
        """The DistillConfig this trial trains: the spec's with the trial's point and seed."""
        return dataclasses.replace(self.spec.distill, weights=self.point.weights,
                                   confidence_threshold=self.point.confidence_threshold, seed=self.seed)


def param_space(spec: TrialSpec, ablation: list[tuple[str, int, SearchPoint]] | None = None) -> dict[str, Any]:
    """The Tune param_space of a search over `spec` (the searcher adds each trial's point), or of
    an ablation: one trial per (variant, seed, point) row."""
    space: dict[str, Any] = {SPEC_KEY: spec.to_tune()}
    if ablation is not None:
        space[ABLATION_KEY] = tune.grid_search([{"variant": variant, "seed": seed, **point.to_tune()}
                                                for variant, seed, point in ablation])
    return space


def from_tune(config: Mapping[str, Any]) -> Trial:
    """The Trial of a Tune config made from `param_space` (search or ablation)."""
    spec = TrialSpec.from_tune(config[SPEC_KEY])
    if ABLATION_KEY in config:
        row = config[ABLATION_KEY]
        return Trial(spec, SearchPoint.from_tune(row), row["variant"], int(row["seed"]))
    return Trial(spec, SearchPoint.from_tune(config), "search", spec.distill.seed)
