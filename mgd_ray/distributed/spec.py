"""What one trial is, typed: what it trains (a point of the search space, or an ablation row),
where it stores, how it scales.

A trial's point is a `SearchPoint`: the four loss weights and the pseudo-label confidence
threshold. In a Tune config, a trial record and the report it is flat, keyed by schema.POINT_KEYS
(each weight paired with its loss term by name: schema.WEIGHT_KEYS); `SearchPoint.from_tune` /
`to_tune` are the only places that read and write that form. The define-by-run space is a
module-level function so the searcher can be pickled and restored.

The study builds one `TrialSpec` per protocol once its teachers exist, and never changes it. Tune
hands a trial a plain dict: `param_space` makes that dict (the spec under "run", plus the
searcher's point or the ablation row), and `from_tune` is the one place that reads it back, for the
trial's driver (trial.py) and the trial records (records.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import DistillConfig, LossWeights, check_confidence_threshold
from ..schema import (
    ABLATION_TERMS,
    ABLATION_VARIANTS,
    LOG_SCALE,
    SEARCH_BOUNDS,
    THRESHOLD_KEY,
    WEIGHT_KEYS,
)

SPEC_KEY = "run"  # a trial config's spec
ABLATION_KEY = "ablation"  # an ablation trial's row: {"variant", "seed", POINT_KEYS...}


def search_space(trial) -> None:
    """Optuna define-by-run space (TPE, multivariate): schema.POINT's searched keys."""
    for key, (low, high) in SEARCH_BOUNDS.items():
        trial.suggest_float(key, low, high, log=key in LOG_SCALE)


@dataclass(frozen=True)
class SearchPoint:
    """One trial's loss weights and confidence threshold, both checked when the point is made."""

    weights: LossWeights = field(default_factory=LossWeights)
    confidence_threshold: float = 0.0

    def __post_init__(self) -> None:
        check_confidence_threshold(self.confidence_threshold)

    @classmethod
    def from_tune(cls, config: Mapping[str, Any]) -> "SearchPoint":
        """The point of a flat dict keyed by POINT_KEYS (a Tune config, a record's "config");
        w_sup, which the search leaves out, is 1."""
        weights = {
            term: float(config.get(key, 1.0) if term == "sup" else config[key])
            for term, key in WEIGHT_KEYS.items()
        }
        return cls(LossWeights(**weights), float(config[THRESHOLD_KEY]))

    def to_tune(self) -> dict[str, float]:
        """The flat dict of every POINT_KEYS key (trial records, ablation rows)."""
        flat = {WEIGHT_KEYS[term]: weight for term, weight in self.weights.as_dict().items()}
        return {**flat, THRESHOLD_KEY: float(self.confidence_threshold)}

    def searched(self) -> dict[str, float]:
        """The keys the search space suggests (a point the searcher evaluates must have those
        only)."""
        return {key: value for key, value in self.to_tune().items() if key in SEARCH_BOUNDS}


def ablation_point(variant: str, paper: SearchPoint, best: SearchPoint | None) -> SearchPoint:
    """The fixed point of one ablation row: the paper's weights with terms switched off, at the
    paper's threshold; the best point found for "mgd_best"."""
    if variant == "mgd_best":
        if best is None:
            raise ValueError(
                "ablation variant mgd_best needs a finished search (no completed trial)"
            )
        return best
    if variant not in ABLATION_TERMS:
        raise ValueError(
            f"ablation variant {variant!r}: expected one of {', '.join(ABLATION_VARIANTS)}"
        )
    weights = {
        term: weight if term == "sup" or term in ABLATION_TERMS[variant] else 0.0
        for term, weight in paper.weights.as_dict().items()
    }
    return SearchPoint(LossWeights(**weights), paper.confidence_threshold)


@dataclass(frozen=True)
class TrainRun:
    """How one Ray Train run (a teacher's or a trial's) scales and where it keeps its
    checkpoints."""

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
        return {
            "workers": self.workers,
            "cpus_per_worker": self.cpus_per_worker,
            "gpus_per_worker": self.gpus_per_worker,
        }


@dataclass(frozen=True)
class TrialSpec:
    """Everything the trials of one protocol share: the base DistillConfig (data, schedule, recipe,
    teacher and ImageNet files, the paper's weights and threshold, the study seed) and the
    TrainRun. A trial changes its point and seed only."""

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
    """One trial as its Tune config says: the spec, the point it trains, its variant and seed, and
    the DistillConfig it trains (the spec's with the point and seed)."""

    spec: TrialSpec
    point: SearchPoint
    variant: str  # "search", or the ablation row
    seed: int
    distill: DistillConfig


def param_space(
    spec: TrialSpec, ablation: list[tuple[str, int, SearchPoint]] | None = None
) -> dict[str, Any]:
    """The Tune param_space of a search over `spec` (the searcher adds each trial's point), or of
    an ablation: one trial per (variant, seed, point) row."""
    space: dict[str, Any] = {SPEC_KEY: spec.to_tune()}
    if ablation is not None:
        # Tune's grid search, as tune.grid_search spells it: one trial per row
        space[ABLATION_KEY] = {
            "grid_search": [
                {"variant": variant, "seed": seed, **point.to_tune()}
                for variant, seed, point in ablation
            ]
        }
    return space


def from_tune(config: Mapping[str, Any]) -> Trial:
    """The Trial of a Tune config made from `param_space` (search or ablation)."""
    spec = TrialSpec.from_tune(config[SPEC_KEY])
    row = config.get(ABLATION_KEY)
    point = SearchPoint.from_tune(row if row is not None else config)
    variant, seed = (
        (row["variant"], int(row["seed"])) if row is not None else ("search", spec.distill.seed)
    )
    distill = dataclasses.replace(
        spec.distill,
        weights=point.weights,
        confidence_threshold=point.confidence_threshold,
        seed=seed,
    )
    return Trial(spec, point, variant, seed, distill)
