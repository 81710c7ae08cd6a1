"""The statistics behind the report's verdicts: a row's mean with its standard error and 95%
interval over seeds, and the paired difference of two rows over the seeds both have.

Seeds are paired across ablation rows (common random numbers): a seed fixes a student's initial
weights, its data order and its CutMix masks whatever the row, so the per-seed difference of two
rows cancels most of what varies from seed to seed, and its interval is narrower than the two
rows' intervals side by side. Intervals are Student-t (n - 1 degrees of freedom, two-sided 95%):
with 3 seeds t = 4.303, so a paired lead is "ahead" only when it is more than 4.3 of its standard
errors from zero. One value has no interval, and nothing is ever ahead on one seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95


def t_quantile(n: int, confidence: float = CONFIDENCE) -> float:
    """The two-sided Student-t quantile for the mean of n values (n - 1 degrees of freedom); NaN
    for n < 2."""
    if n < 2:
        return math.nan
    return float(scipy_stats.t.ppf(0.5 + confidence / 2, n - 1))


@dataclass(frozen=True)
class Estimate:
    """A mean over n values with its sample std (ddof 1), standard error std / sqrt(n) and
    95% t-interval [low, high]; std, se, low and high are NaN for n < 2, everything for n = 0."""

    mean: float
    std: float
    se: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values) -> "Estimate":
        values = np.asarray([v for v in values if v is not None and math.isfinite(v)], float)
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, math.nan, math.nan, math.nan, 0)
        mean = float(values.mean())
        if n < 2:
            return cls(mean, math.nan, math.nan, math.nan, math.nan, 1)
        std = float(values.std(ddof=1))
        se = std / math.sqrt(n)
        half = t_quantile(n) * se
        return cls(mean, std, se, mean - half, mean + half, n)

    @property
    def excludes_zero(self) -> bool:
        """True when the interval lies wholly above or below 0 (never for n < 2)."""
        return self.n >= 2 and (self.low > 0 or self.high < 0)

    @property
    def standard_errors(self) -> float:
        """mean / se: how many standard errors the mean is from 0 (NaN without an se; inf for an
        exact, non-zero difference)."""
        if self.n < 2:
            return math.nan
        if self.se == 0:
            return math.inf if self.mean else math.nan
        return self.mean / self.se


def paired_difference(a: Mapping[int, float], b: Mapping[int, float]) -> Estimate:
    """a - b per seed, over the seeds both have ({seed: value} each), as an Estimate."""
    common = sorted(set(a) & set(b))
    return Estimate.of([a[seed] - b[seed] for seed in common])


def ahead(a: Mapping[int, float], b: Mapping[int, float]) -> bool:
    """True when row a leads row b: the 95% interval of their paired difference lies above 0."""
    difference = paired_difference(a, b)
    return difference.n >= 2 and difference.low > 0
