"""What the study searches and which fixed configurations the ablation table needs.

A trial's point is a `SearchPoint`: the four loss weights and the pseudo-label confidence threshold.
In a Tune config, a trial record and the report it is flat, under the names of schema.POINT_KEYS
(w_sup, w_pixel, lambda_semantic, lambda_region, confidence_threshold); `from_tune` / `to_tune` are
the only places that spell that out. The define-by-run space is a module-level function so the
searcher can be pickled and restored.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..config import LossWeights, check_confidence_threshold
from ..schema import ABLATION_VARIANTS, LOSS_TERMS, POINT_KEYS

# Search bounds: two decades either side of the paper's lambda_I / lambda_R, a factor 4 either
# side of w_P = 1, and the pseudo-label confidence threshold in [0, 0.99] (0 is the paper).
BOUNDS = {
    "w_pixel": (0.25, 4.0),
    "lambda_semantic": (1e-5, 1e-1),
    "lambda_region": (1.0, 1e4),
    "confidence_threshold": (0.0, 0.99),
}
# Point key of each loss term's weight: "sup" -> "w_sup", ..., "region" -> "lambda_region".
WEIGHT_KEYS = dict(zip(LOSS_TERMS, POINT_KEYS))
THRESHOLD_KEY = POINT_KEYS[len(LOSS_TERMS)]


def search_space(trial) -> None:
    """Optuna define-by-run space (TPE, multivariate); w_sup stays 1 as in the paper."""
    trial.suggest_float("w_pixel", *BOUNDS["w_pixel"], log=True)
    trial.suggest_float("lambda_semantic", *BOUNDS["lambda_semantic"], log=True)
    trial.suggest_float("lambda_region", *BOUNDS["lambda_region"], log=True)
    trial.suggest_float("confidence_threshold", *BOUNDS["confidence_threshold"])


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
        weights = {term: float(config.get(key, 1.0) if term == "sup" else config[key])
                   for term, key in WEIGHT_KEYS.items()}
        return cls(LossWeights(**weights), float(config[THRESHOLD_KEY]))

    def to_tune(self) -> dict[str, float]:
        """The flat dict of every POINT_KEYS key (trial records, ablation rows)."""
        flat = {WEIGHT_KEYS[term]: weight for term, weight in self.weights.as_dict().items()}
        return {**flat, THRESHOLD_KEY: float(self.confidence_threshold)}

    def searched(self) -> dict[str, float]:
        """The keys the search space suggests (a point the searcher evaluates must have those only)."""
        return {key: value for key, value in self.to_tune().items() if key in BOUNDS}


def ablation_point(variant: str, paper: SearchPoint, best: SearchPoint | None) -> SearchPoint:
    """The fixed point of one ablation row; the paper's threshold (0) except for the best found."""
    if variant == "mgd_best":
        if best is None:
            raise ValueError("ablation variant mgd_best needs a finished search (no completed trial)")
        return best
    w = paper.weights
    terms = {
        "supervised": (0.0, 0.0, 0.0),
        "pixel": (w.pixel, 0.0, 0.0),
        "pixel_semantic": (w.pixel, w.semantic, 0.0),
        "pixel_region": (w.pixel, 0.0, w.region),
        "mgd_paper": (w.pixel, w.semantic, w.region),
    }
    if variant not in terms:
        raise ValueError(f"ablation variant {variant!r}: expected one of {', '.join(ABLATION_VARIANTS)}")
    pixel, semantic, region = terms[variant]
    return SearchPoint(LossWeights(sup=w.sup, pixel=pixel, semantic=semantic, region=region), 0.0)
