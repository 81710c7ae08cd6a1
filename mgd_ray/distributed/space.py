"""What the study searches and which fixed configurations the ablation table needs.

A trial's point is flat: w_sup, w_pixel, lambda_semantic, lambda_region, confidence_threshold.
The define-by-run space is a module-level function so the searcher can be pickled and restored.
"""
from __future__ import annotations

from typing import Any

from ..config import LossWeights
from ..schema import ABLATION_VARIANTS, POINT_KEYS


# Search bounds: two decades either side of the paper's lambda_I / lambda_R, a factor 4 either
# side of w_P = 1, and the pseudo-label confidence threshold in [0, 0.99] (0 is the paper).
BOUNDS = {
    "w_pixel": (0.25, 4.0),
    "lambda_semantic": (1e-5, 1e-1),
    "lambda_region": (1.0, 1e4),
    "confidence_threshold": (0.0, 0.99),
}


def search_space(trial) -> None:
    """Optuna define-by-run space (TPE, multivariate); w_sup stays 1 as in the paper."""
    trial.suggest_float("w_pixel", *BOUNDS["w_pixel"], log=True)
    trial.suggest_float("lambda_semantic", *BOUNDS["lambda_semantic"], log=True)
    trial.suggest_float("lambda_region", *BOUNDS["lambda_region"], log=True)
    trial.suggest_float("confidence_threshold", *BOUNDS["confidence_threshold"])


def point_from_weights(weights: LossWeights, confidence_threshold: float = 0.0) -> dict[str, float]:
    return {"w_sup": weights.sup, "w_pixel": weights.pixel, "lambda_semantic": weights.semantic,
            "lambda_region": weights.region, "confidence_threshold": float(confidence_threshold)}


def paper_search_point(paper: LossWeights) -> dict[str, float]:
    """The paper's defaults as the searcher's first point (searched keys only)."""
    point = point_from_weights(paper)
    del point["w_sup"]
    return point


def weights_from_point(point: dict[str, Any]) -> LossWeights:
    return LossWeights(sup=float(point.get("w_sup", 1.0)), pixel=float(point["w_pixel"]),
                       semantic=float(point["lambda_semantic"]), region=float(point["lambda_region"]))


def ablation_point(variant: str, paper: LossWeights, best: dict[str, float] | None) -> dict[str, float]:
    """The fixed point of one ablation row; the paper's threshold (0) except for the best found."""
    if variant == "mgd_best":
        if best is None:
            raise ValueError("ablation variant mgd_best needs a finished search (no completed trial)")
        return {k: float(best[k]) for k in POINT_KEYS}
    terms = {
        "supervised": (0.0, 0.0, 0.0),
        "pixel": (paper.pixel, 0.0, 0.0),
        "pixel_semantic": (paper.pixel, paper.semantic, 0.0),
        "pixel_region": (paper.pixel, 0.0, paper.region),
        "mgd_paper": (paper.pixel, paper.semantic, paper.region),
    }
    if variant not in terms:
        raise ValueError(f"ablation variant {variant!r}: expected one of {', '.join(ABLATION_VARIANTS)}")
    pixel, semantic, region = terms[variant]
    return {"w_sup": paper.sup, "w_pixel": pixel, "lambda_semantic": semantic, "lambda_region": region,
            "confidence_threshold": 0.0}
