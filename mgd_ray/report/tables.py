"""The report's tables as pure functions of a trials frame (see `load.normalize_trials`).

Tables come out in long (tidy) form with numbers, mIoU as a fraction like the trial files; turning
them into text (percent, "--" for missing, bold best) is `write.py`'s job. A missing value is NaN
with n = 0, never 0.0, so an interrupted study cannot pass off an empty cell as a result.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd

from mgd_ray.report.load import CONFIG_KEYS, normalize_trials
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
GAIN_VARIANT, GAIN_LABEL = "gain", "Gain of MGD over supervised"
# The teachers' own scores head the ablation table, as in the paper's tables: a distillation row
# means nothing without them.
TEACHER_ROWS = (("teacher_deep", "Teacher T_D (deep)"), ("teacher_wide", "Teacher T_W (wide)"))
# With one seed a row has no spread: "best" then needs a lead of more than this much mIoU. Two
# points: on the synthetic set the supervised student's seed-to-seed std was 1.26 points (5 seeds,
# 150 iterations, `mgd_ray.engine.runner`), so a smaller lead from one seed each can be chance.
SINGLE_SEED_MARGIN = 0.02
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


def _dedupe_seeds(done: pd.DataFrame) -> pd.DataFrame:
    """One result per (protocol, variant, seed): a re-run seed keeps its latest-ended trial."""
    order = done.sort_values(["ended_at", "trial_id"], na_position="first", kind="stable")
    return order.drop_duplicates(["protocol", "variant", "seed"], keep="last")


def separated_best(column: pd.DataFrame, margin: float = SINGLE_SEED_MARGIN) -> list:
    """Index of the row to mark best in one protocol's column (mean, std, n), or [] when the top
    row does not lead the runner-up by more than the larger seed spread (sample std) of the two,
    or by more than `margin` when neither has a spread (one seed each). One measured row, or a
    tie, has nothing it beats."""
    measured = column[column["n"] > 0].sort_values("mean", ascending=False, kind="stable")
    if len(measured) < 2:
        return []
    top, second = measured.iloc[0], measured.iloc[1]
    spreads = [s for s in (top["std"], second["std"]) if not math.isnan(s)]
    needed = max(spreads) if spreads else margin
    return [measured.index[0]] if top["mean"] - second["mean"] > needed else []


def at_background(
    mean: float, background: float | None, margin: float = BACKGROUND_MARGIN
) -> bool:
    """True when an mIoU is within `margin` of (or below) the all-background score."""
    return background is not None and not math.isnan(mean) and mean <= background + margin


def _ablation_row(
    variant: str, label: str, protocol: str, mean: float, std: float, n: int
) -> dict:
    """One row of the long-form ablation table, not (yet) marked best."""
    return dict(
        variant=variant, label=label, protocol=protocol, mean=mean, std=std, n=n, best=False
    )


def ablation_table(
    trials: pd.DataFrame,
    protocols: list[str],
    teachers: dict | None = None,
    background: float | None = None,
) -> pd.DataFrame:
    """Loss-term ablation, long form: one row per (ablation row, protocol) with columns
    variant, label, protocol, mean, std (ddof=1; NaN for n < 2), n, best, background; then the
    gain rows (mean = best MGD mean - supervised mean). Only completed trials with a finite mIoU
    count. `teachers` ({protocol: {"deep": miou, "wide": miou}}) adds the two teacher rows first
    (n = 1, never best); `background` (the all-background mIoU) flags rows at that level.
    "best" follows `separated_best`."""
    frame = normalize_trials(trials)
    done = frame[
        (frame["kind"] == "ablation") & (frame["status"] == "completed") & frame["miou"].notna()
    ]
    done = _dedupe_seeds(done)
    stats = done.groupby(["variant", "protocol"])["miou"].agg(["mean", "std", "count"])
    rows = []
    if teachers is not None:
        for variant, label in TEACHER_ROWS:
            for protocol in protocols:
                miou = (teachers.get(protocol) or {}).get(variant.removeprefix("teacher_"))
                miou = math.nan if miou is None else float(miou)
                n = 0 if math.isnan(miou) else 1
                rows.append(_ablation_row(variant, label, protocol, miou, math.nan, n))
    for variant, label in ABLATION_ROWS:
        for protocol in protocols:
            mean, std, n = (
                stats.loc[(variant, protocol)]
                if (variant, protocol) in stats.index
                else (math.nan, math.nan, 0)
            )
            std = float(std) if n >= 2 else math.nan
            rows.append(_ablation_row(variant, label, protocol, float(mean), std, int(n)))
    table = pd.DataFrame(
        rows, columns=["variant", "label", "protocol", "mean", "std", "n", "best"]
    )
    students = table["variant"].isin([v for v, _ in ABLATION_ROWS])
    for protocol in protocols:
        table.loc[separated_best(table[students & (table["protocol"] == protocol)]), "best"] = True
    gains = []
    for protocol in protocols:
        column = table[students & (table["protocol"] == protocol)].set_index("variant")["mean"]
        mgd = column[["mgd_paper", "mgd_best"]].max()  # skips a missing MGD row
        gain = mgd - column["supervised"]  # NaN if either side is missing
        gains.append(_ablation_row(GAIN_VARIANT, GAIN_LABEL, protocol, float(gain), math.nan, 0))
    gains = pd.DataFrame(gains, columns=table.columns)
    table = pd.concat([table, gains], ignore_index=True).astype({"n": "Int64"})
    table.loc[table["variant"] == GAIN_VARIANT, "n"] = pd.NA  # a difference has no seed count
    table["background"] = [
        variant != GAIN_VARIANT and at_background(mean, background)
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
