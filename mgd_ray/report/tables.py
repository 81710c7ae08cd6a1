"""The report's tables as pure functions of a trials frame (see `load.normalize_trials`).

Tables come out in long (tidy) form with numbers, mIoU as a fraction like the trial files; turning
them into text (percent, "--" for missing, bold best) is `write.py`'s job. A missing value is NaN
with n = 0, never 0.0, so an interrupted study cannot pass off an empty cell as a result. Means,
standard errors, intervals and paired differences come from `stats.py`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict
from typing import Mapping

import numpy as np
import pandas as pd

from mgd_ray.report.load import CONFIG_KEYS, normalize_trials
from mgd_ray.report.stats import Estimate, ahead, paired_difference
from mgd_ray.schema import ABLATION_VARIANTS, best_trial

ABLATION_LABELS = {
    "supervised": "Supervised only",
    "pixel": "+ L_P",
    "pixel_semantic": "+ L_P + L_I",
    "pixel_region": "+ L_P + L_R",
    "mgd_paper": "MGD (paper weights)",
    "mgd_best": "MGD (best found)",
}
# (variant, row label) in the order the ablation table shows them (schema.ABLATION_VARIANTS).
ABLATION_ROWS = tuple((variant, ABLATION_LABELS[variant]) for variant in ABLATION_VARIANTS)
GAIN_VARIANT, GAIN_LABEL = "gain", "Gain of MGD (paper weights) over supervised"
GAIN_BEST_VARIANT, GAIN_BEST_LABEL = "gain_best", "Gain of MGD (best found) over supervised"
# The gain rows: (variant, label, the MGD row it measures); each is that row minus supervised only,
# paired by seed (stats.paired_difference).
GAIN_ROWS = (
    (GAIN_VARIANT, GAIN_LABEL, "mgd_paper"),
    (GAIN_BEST_VARIANT, GAIN_BEST_LABEL, "mgd_best"),
)
GAIN_VARIANTS = tuple(variant for variant, _, _ in GAIN_ROWS)
# The teachers' own scores head the ablation table, as in the paper's tables: a distillation row
# means nothing without them.
TEACHER_ROWS = (("teacher_deep", "Teacher T_D (deep)"), ("teacher_wide", "Teacher T_W (wide)"))
# A row within this much mIoU of the all-background score learned nothing beyond the class prior.
BACKGROUND_MARGIN = 0.01
THRESHOLD_EDGES = (0.0, 0.5, 0.7, 0.8, 0.9, 1.0)
SEARCH_COLUMNS = [
    "protocol",
    "best_trial",
    *CONFIG_KEYS,
    "miou",
    "trials",
    "completed",
    "early_stopped",
    "failed",
    "running",
    "gpu_hours",
    "cpu_hours",
]
ABLATION_COLUMNS = [
    "variant",
    "label",
    "protocol",
    "mean",
    "std",
    "se",
    "low",
    "high",
    "n",
    "best",
]


def _dedupe_seeds(done: pd.DataFrame) -> pd.DataFrame:
    """One result per (protocol, variant, seed): a re-run seed keeps its latest-ended trial."""
    order = done.sort_values(["ended_at", "trial_id"], na_position="first", kind="stable")
    return order.drop_duplicates(["protocol", "variant", "seed"], keep="last")


def per_seed(done: pd.DataFrame, variant: str, protocol: str) -> dict[int, float]:
    """{seed: mIoU} of one row's completed ablation trials (deduplicated)."""
    rows = done[(done["variant"] == variant) & (done["protocol"] == protocol)]
    return {int(seed): float(miou) for seed, miou in zip(rows["seed"], rows["miou"])}


def separated_best(column: pd.DataFrame, seeds: Mapping[str, Mapping[int, float]]) -> list:
    """Index of the row to mark best in one protocol's student rows (columns variant, mean, n),
    or []: the top row by mean is best only when it is ahead of the runner-up (stats.ahead: the
    95% interval of their paired difference over common seeds lies above 0). `seeds` maps each
    variant to its {seed: mIoU}. One measured row, or one seed, has nothing it beats."""
    measured = column[column["n"] > 0].sort_values("mean", ascending=False, kind="stable")
    if len(measured) < 2:
        return []
    top, second = measured.iloc[0], measured.iloc[1]
    return [measured.index[0]] if ahead(seeds[top["variant"]], seeds[second["variant"]]) else []


def at_background(
    mean: float, background: float | None, margin: float = BACKGROUND_MARGIN
) -> bool:
    """True when an mIoU is within `margin` of (or below) the all-background score."""
    return background is not None and not math.isnan(mean) and mean <= background + margin


def _ablation_row(variant: str, label: str, protocol: str, estimate: Estimate) -> dict:
    """One row of the long-form ablation table, not (yet) marked best."""
    # the estimate's fields in their order: mean, std, se, low, high, n
    return {
        "variant": variant,
        "label": label,
        "protocol": protocol,
        **asdict(estimate),
        "best": False,
    }


def ablation_table(
    trials: pd.DataFrame,
    protocols: list[str],
    teachers: dict | None = None,
    background: float | None = None,
) -> pd.DataFrame:
    """Loss-term ablation, long form: one row per (ablation row, protocol) with columns variant,
    label, protocol, mean, std (ddof=1), se (std / sqrt(n)), low / high (the 95% t-interval of the
    mean; NaN for n < 2), n, best, background; then the gain rows: each MGD row minus supervised
    only, paired by seed (mean, se and interval of the per-seed differences, n = seeds both rows
    have). Only completed trials with a finite mIoU count. `teachers` ({protocol: {"deep": miou,
    "wide": miou}}) adds the two teacher rows first (n = 1, never best); `background` (the
    all-background mIoU) flags rows at that level. "best" follows `separated_best`."""
    frame = normalize_trials(trials)
    done = frame[
        (frame["kind"] == "ablation") & (frame["status"] == "completed") & frame["miou"].notna()
    ]
    done = _dedupe_seeds(done)
    rows = []
    if teachers is not None:
        for variant, label in TEACHER_ROWS:
            for protocol in protocols:
                miou = (teachers.get(protocol) or {}).get(variant.removeprefix("teacher_"))
                estimate = Estimate.of([] if miou is None else [float(miou)])
                rows.append(_ablation_row(variant, label, protocol, estimate))
    seeds = {
        protocol: {variant: per_seed(done, variant, protocol) for variant, _ in ABLATION_ROWS}
        for protocol in protocols
    }
    for variant, label in ABLATION_ROWS:
        for protocol in protocols:
            estimate = Estimate.of(seeds[protocol][variant].values())
            rows.append(_ablation_row(variant, label, protocol, estimate))
    for variant, label, mgd in GAIN_ROWS:
        for protocol in protocols:
            gain = paired_difference(seeds[protocol][mgd], seeds[protocol]["supervised"])
            rows.append(_ablation_row(variant, label, protocol, gain))
    table = pd.DataFrame(rows, columns=ABLATION_COLUMNS).astype({"n": "Int64"})
    students = table["variant"].isin([v for v, _ in ABLATION_ROWS])
    for protocol in protocols:
        column = table[students & (table["protocol"] == protocol)]
        table.loc[separated_best(column, seeds[protocol]), "best"] = True
    table["background"] = [
        variant not in GAIN_VARIANTS and at_background(mean, background)
        for variant, mean in zip(table["variant"], table["mean"])
    ]
    return table


def _compute_hours(search: pd.DataFrame, device: str) -> float:
    hours = search.loc[search["device"] == device, "device_hours"]
    return float(hours.sum()) if hours.notna().any() else math.nan


def search_table(
    trials: pd.DataFrame, protocols: list[str], default_device: str | None = None
) -> pd.DataFrame:
    """Per protocol: the best completed search trial's configuration and mIoU, trial counts by
    status, and device-hours summed over all its search trials (gpu_hours / cpu_hours)."""
    frame = normalize_trials(trials)
    if default_device is not None:
        frame["device"] = frame["device"].where(frame["device"].notna(), default_device)
    rows = []
    for protocol in protocols:
        search = frame[(frame["kind"] == "search") & (frame["protocol"] == protocol)]
        row = dict(
            protocol=protocol,
            best_trial=None,
            **{key: math.nan for key in CONFIG_KEYS},
            miou=math.nan,
        )
        best = best_trial(search.itertuples(index=False))  # the study's own rule (mgd_ray.schema)
        if best is not None:
            row.update(
                best_trial=best.trial_id,
                miou=float(best.miou),
                **{key: float(getattr(best, key)) for key in CONFIG_KEYS},
            )
        counts = search["status"].value_counts()
        row.update(
            trials=len(search),
            completed=int(counts.get("completed", 0)),
            early_stopped=int(counts.get("early_stopped", 0)),
            failed=int(counts.get("failed", 0)),
            running=int(counts.get("running", 0)),
            gpu_hours=_compute_hours(search, "gpu"),
            cpu_hours=_compute_hours(search, "cpu"),
        )
        rows.append(row)
    return pd.DataFrame(rows, columns=SEARCH_COLUMNS)


def _bin_labels(edges: tuple[float, ...]) -> list[str]:
    last = len(edges) - 2
    return [
        f"[{lo:g}, {hi:g}{']' if i == last else ')'}"
        for i, (lo, hi) in enumerate(zip(edges[:-1], edges[1:]))
    ]


def threshold_table(
    trials: pd.DataFrame, protocols: list[str], edges: tuple[float, ...] = THRESHOLD_EDGES
) -> pd.DataFrame:
    """mIoU against confidence threshold: per (protocol, bin) of completed or early-stopped search
    trials, columns protocol, bin, low, high, n, miou (mean of each trial's last mIoU),
    kept_fraction (mean). Bins are [low, high), the last one closed."""
    if len(edges) < 2 or any(b <= a for a, b in zip(edges[:-1], edges[1:])):
        raise ValueError(
            f"threshold bin edges {edges!r}: expected at least two increasing numbers"
        )
    frame = normalize_trials(trials)
    used = frame[
        (frame["kind"] == "search")
        & frame["status"].isin(["completed", "early_stopped"])
        & frame["miou"].notna()
        & frame["confidence_threshold"].notna()
    ]
    tau = used["confidence_threshold"].to_numpy()
    outside = used[(tau < edges[0]) | (tau > edges[-1])]
    if len(outside):
        warnings.warn(
            f"{len(outside)} search trial(s) have a confidence threshold outside "
            f"[{edges[0]}, {edges[-1]}] and are left out: {list(outside['trial_id'])}",
            stacklevel=2,
        )
    # side="right" puts tau == edge in the bin starting there; tau == last edge joins the last bin.
    index = np.clip(np.searchsorted(edges, tau, side="right") - 1, 0, len(edges) - 2)
    used = used.assign(bin=index)
    rows = []
    for protocol in protocols:
        for i, label in enumerate(_bin_labels(edges)):
            cell = used[
                (used["protocol"] == protocol)
                & (used["bin"] == i)
                & (used["confidence_threshold"] >= edges[0])
                & (used["confidence_threshold"] <= edges[-1])
            ]
            rows.append(
                dict(
                    protocol=protocol,
                    bin=label,
                    low=edges[i],
                    high=edges[i + 1],
                    n=len(cell),
                    miou=float(cell["miou"].mean()) if len(cell) else math.nan,
                    kept_fraction=float(cell["kept_fraction"].mean()),
                )
            )
    return pd.DataFrame(
        rows, columns=["protocol", "bin", "low", "high", "n", "miou", "kept_fraction"]
    )
