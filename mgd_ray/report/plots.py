"""The report's figures as PNG files (matplotlib, Agg backend: no display on a cluster node).

Each function takes a trials frame or a long-form table from `tables.py` and a path, writes the
PNG atomically (a reader never sees half a file) and returns the path. Missing data is drawn as
missing (no bar, no point, a "no data" note), never as zero.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from mgd_ray.report.load import normalize_trials  # noqa: E402
from mgd_ray.report.tables import ABLATION_ROWS, GAIN_VARIANTS  # noqa: E402
from mgd_ray.schema import atomic_write  # noqa: E402


def _save(fig: plt.Figure, path: str) -> str:
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def _no_data(ax: plt.Axes, text: str = "no data yet") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def plot_optimization_history(trials: pd.DataFrame, protocols: list[str], path: str) -> str:
    """One panel per protocol: each search trial's last mIoU (%) in order of start, and the
    running best over completed trials. Early-stopped trials are hollow, failed ones ticks."""
    frame = normalize_trials(trials)
    fig, axes = plt.subplots(
        1, max(len(protocols), 1), figsize=(4.5 * max(len(protocols), 1), 3.6), squeeze=False
    )
    for ax, protocol in zip(axes[0], protocols or [None]):
        search = frame[(frame["kind"] == "search") & (frame["protocol"] == protocol)]
        search = search.sort_values(["started_at", "trial_id"], na_position="last", kind="stable")
        order = np.arange(1, len(search) + 1)
        miou = 100 * search["miou"].to_numpy()
        status = search["status"].to_numpy()
        ax.set_title(f"protocol {protocol}" if protocol else "no protocols")
        ax.set_xlabel("trial (in order of start)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("mIoU (%)")
        if not np.isfinite(miou).any():
            ax.set_ylim(0, 100)
            _no_data(ax, "no evaluated search trial yet")
            continue
        done = status == "completed"
        styles = {
            "completed": dict(color="C0", label="completed"),
            "early_stopped": dict(
                facecolors="none", edgecolors="C0", label="early-stopped (last mIoU)"
            ),
            "running": dict(marker="^", color="C2", label="running (latest mIoU)"),
        }
        for name, style in styles.items():
            shown = (status == name) & np.isfinite(miou)
            if shown.any():  # an empty scatter would still claim a legend entry
                ax.scatter(order[shown], miou[shown], zorder=3, **style)
        failed = order[status == "failed"]
        if len(failed):
            ax.scatter(
                failed,
                np.full(len(failed), np.nanmin(miou)),
                marker="x",
                color="C3",
                label="failed (no mIoU)",
                zorder=3,
            )
        # cummax leaves NaN where a trial is not completed; the best so far carries over them.
        best = pd.Series(np.where(done, miou, np.nan)).cummax().ffill().to_numpy()
        if np.isfinite(best).any():
            ax.step(order, best, where="post", color="C1", label="best so far (completed)")
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_ablation_bars(ablation: pd.DataFrame, path: str) -> str:
    """Grouped bars: mean mIoU (%) per ablation row within each protocol, error bars = the 95%
    interval of the mean over seeds (none for one seed); missing cells have no bar and are
    labelled "n/a"."""
    rows = ablation[~ablation["variant"].isin(GAIN_VARIANTS)]
    protocols = list(dict.fromkeys(rows["protocol"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 2.2 * len(protocols) + 3), 4.2))
    width = 0.8 / len(ABLATION_ROWS)
    x = np.arange(len(protocols))
    any_data = bool(np.isfinite(rows["mean"].to_numpy(dtype=float)).any())
    for k, (variant, label) in enumerate(ABLATION_ROWS):
        cells = rows[rows["variant"] == variant].set_index("protocol").reindex(protocols)
        mean = 100 * cells["mean"].to_numpy(dtype=float)
        std = 100 * (cells["high"] - cells["mean"]).to_numpy(dtype=float)
        pos = x - 0.4 + width * (k + 0.5)
        shown = np.isfinite(mean)
        ax.bar(pos[shown], mean[shown], width, label=label, color=f"C{k}")
        best = shown & cells["best"].fillna(False).to_numpy(dtype=bool)
        # outlined separately so the legend swatches stay plain
        ax.bar(pos[best], mean[best], width, fill=False, edgecolor="k", linewidth=1.5)
        spread = shown & np.isfinite(std)  # one seed: no error bar rather than a zero-width one
        ax.errorbar(pos[spread], mean[spread], yerr=std[spread], fmt="none", ecolor="k", capsize=3)
        for p in pos[~shown] if any_data else []:
            ax.text(p, 0, "n/a", rotation=90, ha="center", va="bottom", fontsize=7, color="0.4")
    ax.set_xticks(x, [f"protocol {p}" for p in protocols])
    ax.set_ylabel("mIoU (%)  (mean, error bar = 95% interval over seeds)")
    ax.set_title("Loss-term ablation (black edge: best per protocol)")
    ax.set_xlim(-0.5, max(len(protocols), 1) - 0.5)
    if not any_data:
        ax.set_ylim(0, 100)
        _no_data(ax, "no completed ablation trial yet")
    else:
        top = np.nanmax(100 * rows["high"].fillna(rows["mean"]).to_numpy(dtype=float))
        ax.set_ylim(0, top * 1.25)  # room for the legend above the bars
        ax.legend(fontsize=7, ncol=3, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_threshold_curve(threshold: pd.DataFrame, path: str) -> str:
    """mIoU (%) against confidence-threshold bin per protocol (solid, left axis) and the mean
    kept-pixel fraction (dashed, right axis); empty bins are gaps."""
    protocols = list(dict.fromkeys(threshold["protocol"]))
    labels = list(dict.fromkeys(threshold["bin"]))
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    kept_ax = ax.twinx()
    x = np.arange(len(labels))
    for k, protocol in enumerate(protocols):
        cells = threshold[threshold["protocol"] == protocol].set_index("bin").reindex(labels)
        if not cells["n"].gt(0).any():
            continue  # keeps the colour: protocol k is C{k} in every run of the report
        ax.plot(
            x,
            100 * cells["miou"].to_numpy(dtype=float),
            "o-",
            color=f"C{k}",
            label=f"{protocol} mIoU",
        )
        kept_ax.plot(
            x,
            cells["kept_fraction"].to_numpy(dtype=float),
            "s--",
            color=f"C{k}",
            alpha=0.6,
            label=f"{protocol} kept fraction",
        )
    ax.set_xticks(x, labels)
    ax.set_xlabel("confidence threshold tau (bin)")
    ax.set_ylabel("mIoU (%)  (mean over search trials)")
    kept_ax.set_ylabel("kept-pixel fraction (dashed)")
    kept_ax.set_ylim(0, 1.05)
    ax.set_title("Threshold sensitivity (early-stopped trials: last mIoU)")
    if not np.isfinite(threshold["miou"].to_numpy(dtype=float)).any():
        ax.set_ylim(0, 100)
        _no_data(ax, "no evaluated search trial yet")
    else:
        handles = ax.get_legend_handles_labels()
        kept = kept_ax.get_legend_handles_labels()
        ax.legend(
            handles[0] + kept[0],
            handles[1] + kept[1],
            fontsize=7,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.18),
            ncol=max(len(handles[0]), 1),
        )
    ax.grid(alpha=0.3)
    return _save(fig, path)


# The rows a learning curve compares: the baseline and the paper's method.
CURVE_ROWS = (("supervised", "Supervised only", "C0"), ("mgd_paper", "MGD (paper weights)", "C3"))


def plot_learning_curves(trials: pd.DataFrame, protocols: list[str], path: str) -> str:
    """One panel per protocol: val mIoU (%) against iteration for supervised only and MGD with
    the paper's weights, from each completed ablation trial's history: a thin line per seed, the
    band between the lowest and highest seed at each evaluation, and the mean over seeds."""
    frame = normalize_trials(trials)
    count = max(len(protocols), 1)
    fig, axes = plt.subplots(1, count, figsize=(4.8 * count, 3.6), squeeze=False)
    for ax, protocol in zip(axes[0], protocols or [None]):
        ax.set_title(f"protocol {protocol}" if protocol else "no protocols")
        ax.set_xlabel("iteration")
        ax.set_ylabel("val mIoU (%)")
        drawn = False
        for variant, label, colour in CURVE_ROWS:
            runs = frame[
                (frame["kind"] == "ablation")
                & (frame["protocol"] == protocol)
                & (frame["variant"] == variant)
                & (frame["status"] == "completed")
            ]
            curves = {}
            for seed, history in zip(runs["seed"], runs["history"]):
                points = {
                    int(h["iteration"]): 100 * float(h["miou"])
                    for h in history
                    if isinstance(h, dict) and h.get("miou") is not None
                }
                if points:
                    curves[seed] = pd.Series(points).sort_index()
            if not curves:
                continue
            drawn = True
            table = pd.DataFrame(curves).sort_index()
            for seed in table.columns:
                ax.plot(table.index, table[seed], color=colour, alpha=0.35, linewidth=0.8)
            ax.fill_between(
                table.index, table.min(axis=1), table.max(axis=1), color=colour, alpha=0.15
            )
            ax.plot(
                table.index,
                table.mean(axis=1),
                color=colour,
                linewidth=2,
                label=f"{label} (mean of {table.shape[1]} seed(s))",
            )
        if drawn:
            ax.legend(fontsize=7, loc="lower right")
            ax.grid(alpha=0.3)
        else:
            ax.set_ylim(0, 100)
            _no_data(ax, "no completed supervised / MGD ablation trial yet")
    return _save(fig, path)
