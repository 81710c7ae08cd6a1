"""REPORT.md's opening: what the run was (its budget, the all-background score, the teachers),
whether MGD leads supervised (paired intervals over seeds), whether the search ranked its trials,
the verdict that follows, and the showcase's shipped record that other synthetic reports quote."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import pandas as pd

from mgd_ray.report import format as fmt
from mgd_ray.report.load import normalize_trials
from mgd_ray.report.stats import CONFIDENCE, Estimate
from mgd_ray.report.tables import GAIN_VARIANT, GAIN_VARIANTS


def regime(study: dict[str, Any]) -> str:
    """ "from scratch" or "ImageNet-initialised", from study.json's "pretrained" when present."""
    if "pretrained" in study:
        # "imagenet" / "none" (the --pretrained regime); booleans from earlier studies read the
        # same way
        return (
            "ImageNet-initialised" if study["pretrained"] in (True, "imagenet") else "from scratch"
        )
    if study.get("dataset", "synthetic") == "synthetic":
        return "from scratch"
    return "ImageNet-initialised (assumed: study.json does not say)"


def what_the_run_was(
    study: dict[str, Any],
    ablation: pd.DataFrame | None = None,
    trials: pd.DataFrame | None = None,
    showcase: dict[str, Any] | None = None,
) -> list[str]:
    """REPORT.md's opening: dataset, regime, budget per run, seeds, how trials were selected and
    how rows are compared; then the verdicts, each from the statistics of `stats.py`: whether any
    row is separated, MGD against supervised, the search's spread against the seed spread, and
    whether TPE and ASHA acted. A study that is not the showcase quotes the showcase's measured
    verdict (`showcase`: the record shipped in mgd_ray/presets/showcase.json)."""
    budget = study.get("budget") or {}
    background = study.get("background_miou")
    lines = [
        "## What this run was",
        "",
        f"- Dataset: {study.get('dataset', fmt.MISSING)}"
        + (f" ({study['num_classes']} classes)" if study.get("num_classes") else "")
        + f"; regime: {regime(study)}; device: {study.get('device', fmt.MISSING)}"
        + (f"; budget: {budget['name']}" if budget.get("name") else ""),
        f"- Budget per run: teachers {per_protocol(budget.get('teacher_iterations'))} "
        "iterations, students "
        f"{per_protocol(budget.get('student_iterations', study.get('iterations')))} iterations"
        + (f", batch {budget['batch_size']}" if budget.get("batch_size") else "")
        + (f", crop {budget['crop_size']}" if budget.get("crop_size") else ""),
        f"- Seeds per ablation row: {budget.get('ablation_seeds', fmt.MISSING)}; search trials "
        f"per protocol: {budget.get('search_trials', fmt.MISSING)}",
        "- Selection: the search ranks its trials on a held-out selection set of the training "
        "split (unlabeled images whose labels training never uses"
        + (
            f": {per_protocol(budget['selection_images'])} images"
            if budget.get("selection_images")
            else ""
        )
        + '); every ablation row, "MGD (best found)" included, is trained again with seeds '
        "the search never used and reported on val.",
        f"- Comparisons: seeds are paired across rows (common random numbers: a seed fixes the "
        f"student's initial weights, data order and CutMix masks in every row); a row is ahead "
        f"of another only when the {100 * CONFIDENCE:.0f}% Student-t interval of their per-seed "
        f"difference excludes zero.",
    ]
    if background is not None:
        lines.append(
            f"- All-background score (predicting background everywhere on val): "
            f"{100 * background:.2f} mIoU"
        )
    lines += [
        "",
        _verdict(ablation, study.get("separating_command"), study.get("separating_note", "")),
    ]
    if ablation is not None:
        lines += [f"- {line}" for line in mgd_against_supervised(ablation)]
    if trials is not None:
        lines += [f"- {line}" for line in search_spread(trials, ablation, budget)]
    if showcase and budget.get("name") != "showcase" and study.get("dataset") == "synthetic":
        lines += ["", *showcase_lines(showcase)]
    return lines


def showcase_lines(record: dict[str, Any]) -> list[str]:
    """What the showcase found, as a record: its command, when and where it was measured, how
    long it took, and its verdicts."""
    return [
        f"**What the showcase found** (a record, not this run's result): `{record['command']}`, "
        f"measured on {record['date']} at commit {record['commit']}, {record['minutes']:.0f} "
        f"minutes on {record['machine']}:",
        *(f"- {line}" for line in record["verdicts"]),
    ]


def _row(ablation: pd.DataFrame, variant: str, protocol: str) -> pd.Series | None:
    rows = ablation[(ablation["variant"] == variant) & (ablation["protocol"] == protocol)]
    return rows.iloc[0] if len(rows) else None


def _estimate_text(row: pd.Series) -> str:
    if not row["n"] or pd.isna(row["n"]):
        return fmt.MISSING
    if pd.isna(row["se"]):
        return f"{100 * row['mean']:.2f} (n={row['n']})"
    return f"{100 * row['mean']:.2f} \u00b1 {100 * row['se']:.2f} (n={row['n']})"


def mgd_against_supervised(ablation: pd.DataFrame) -> list[str]:
    """Per protocol with both rows measured: MGD with the paper's weights against supervised only,
    by their paired gain and its interval: ahead (interval above zero), behind (below), or not
    separated; and when not ahead, why: teachers at the background level, teachers not above the
    supervised student, one seed (no interval), or else the budget."""
    lines = []
    for protocol in dict.fromkeys(ablation["protocol"]):
        sup, mgd = _row(ablation, "supervised", protocol), _row(ablation, "mgd_paper", protocol)
        gain = _row(ablation, GAIN_VARIANT, protocol)
        if sup is None or mgd is None or gain is None or not (sup["n"] and mgd["n"]):
            continue
        if pd.isna(sup["n"]) or pd.isna(mgd["n"]) or pd.isna(gain["mean"]):
            continue
        said = (
            f"{protocol}: MGD with the paper's weights {_estimate_text(mgd)} against supervised "
            f"only {_estimate_text(sup)}: paired gain "
            f"{fmt.gain_cell(*gain[['mean', 'low', 'high', 'n']])}"
        )
        difference = Estimate(*gain[["mean", "std", "se", "low", "high", "n"]])
        if difference.n >= 2:
            said += f", {difference.standard_errors:.1f} standard errors"
        teachers = [
            row
            for variant in ("teacher_deep", "teacher_wide")
            if (row := _row(ablation, variant, protocol)) is not None and row["n"]
        ]
        best_teacher = max((t["mean"] for t in teachers), default=math.nan)
        if difference.excludes_zero and difference.mean > 0:
            lines.append(f"{said}: **MGD is ahead** (the interval lies above zero).")
        elif difference.excludes_zero:
            lines.append(f"{said}: **MGD is behind** (the interval lies below zero).")
        elif teachers and all(bool(t["background"]) for t in teachers):
            lines.append(f"{said}: not separated; the teachers score at the all-background level.")
        elif not math.isnan(best_teacher) and best_teacher <= sup["mean"]:
            lines.append(
                f"{said}: not separated; the teachers are not above the supervised student (best "
                f"teacher {100 * best_teacher:.2f}): they have little to teach."
            )
        elif difference.n < 2:
            lines.append(f"{said}: not separated; one paired seed has no interval.")
        else:
            lines.append(
                f"{said}: not separated at this budget (the interval contains zero; more seeds "
                "or iterations per row would be needed to tell)."
            )
    return lines


def search_spread(
    trials: pd.DataFrame, ablation: pd.DataFrame | None, budget: dict[str, Any]
) -> list[str]:
    """Per protocol: the best and worst completed search trial against the seed spread (the
    largest sample std over seeds of the student rows), and whether TPE left its random start-up
    and ASHA stopped any trial."""
    frame = normalize_trials(trials)
    lines = []
    for protocol in dict.fromkeys(frame["protocol"]):
        search = frame[(frame["protocol"] == protocol) & (frame["kind"] == "search")]
        done = search[(search["status"] == "completed") & search["miou"].notna()]
        if not len(done):
            continue
        spread = math.nan
        if ablation is not None:
            students = ablation[
                (ablation["protocol"] == protocol)
                & ~ablation["variant"].isin([*GAIN_VARIANTS, "teacher_deep", "teacher_wide"])
            ]
            spread = students["std"].max()
        best, worst = done["miou"].max(), done["miou"].min()
        said = (
            f"{protocol} search: best trial {100 * best:.2f}, worst {100 * worst:.2f} "
            f"({len(done)} completed, on the selection set)"
        )
        if pd.isna(spread):
            said += "; no seed spread measured (one seed per row)"
        elif best - worst > spread:
            said += (
                f": **they differ by {100 * (best - worst):.2f} points, more than the seed "
                f"spread** ({100 * spread:.2f}, the largest std over seeds of a student row)"
            )
        else:
            said += (
                f": within the seed spread ({100 * spread:.2f}); this search cannot rank its "
                "trials"
            )
        startup = budget.get("tpe_startup_trials")
        stopped = int((search["status"] == "early_stopped").sum())
        if startup is not None:
            modelled = max(0, len(search) - int(startup))
            said += (
                f". TPE: {min(len(search), int(startup))} random start-up trial(s), "
                f"{modelled} suggested from its model"
            )
        said += f"; ASHA stopped {stopped} trial(s) early."
        lines.append(said)
    return lines


def _verdict(ablation: pd.DataFrame | None, command: str | None, note: str = "") -> str:
    """One sentence: whether the rows are separated at this budget, and what to run if not."""
    others = [*GAIN_VARIANTS, "teacher_deep", "teacher_wide"]
    students = (
        ablation[~ablation["variant"].isin(others)] if ablation is not None else pd.DataFrame()
    )
    measured = students[students["n"].fillna(0) > 0] if len(students) else students
    teachers = (
        ablation[ablation["variant"].isin(["teacher_deep", "teacher_wide"])]
        if ablation is not None
        else pd.DataFrame()
    )
    weak_teachers = bool(len(teachers)) and bool(teachers["background"].any())
    separated = bool(len(measured)) and bool(measured["best"].any())
    run = f" The rows separate in the showcase: run `{command}`{note}." if command else ""
    if not len(measured):
        return "**No ablation row has finished yet.**" + run
    if separated and not weak_teachers:
        return (
            "**At this budget some rows are separated**: a bold cell is ahead of its runner-up "
            f"(the {100 * CONFIDENCE:.0f}% interval of their paired difference lies above zero); "
            "unbolded protocols are not separated."
        )
    gains = ablation[ablation["variant"].isin(GAIN_VARIANTS)] if ablation is not None else []
    mgd_ahead = bool(len(gains)) and bool(((gains["n"].fillna(0) >= 2) & (gains["low"] > 0)).any())
    if mgd_ahead and not weak_teachers:
        return (
            "**MGD is ahead of supervised only at this budget** (the interval of the paired gain "
            "lies above zero, below); the distilling rows are not separated from one another, so "
            "this budget does not rank the loss terms beyond that."
        )
    seeds = int(measured["n"].max())
    reasons = []
    if not separated:
        reasons.append(
            "with one seed per row no row can be told apart from another"
            if seeds < 2
            else "no row is ahead of its runner-up beyond the interval of their paired difference"
        )
    if weak_teachers:
        measured_teachers = teachers[teachers["n"].fillna(0) > 0]
        who = "its teachers score" if measured_teachers["background"].all() else "a teacher scores"
        reasons.append(
            f"{who} at the all-background level, so distilling from them cannot help, "
            "whatever the rows show"
        )
    return (
        "**This budget tests the pipeline end to end; it cannot rank the loss terms**: "
        f"{', and '.join(reasons)}." + run
    )


SHOWCASE_RECORD = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets", "showcase.json"
)


def showcase_record(path: str | None = None) -> dict[str, Any] | None:
    """The showcase's measured verdict shipped with the package (SHOWCASE_RECORD,
    mgd_ray/presets/showcase.json: command, date, commit, minutes, machine, verdicts), or None
    when there is none."""
    path = path or SHOWCASE_RECORD
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def per_protocol(value) -> str:
    """study.json's per-protocol numbers ({"1/8": 40, ...}) as text; one number when all agree."""
    if value is None:
        return fmt.MISSING
    if isinstance(value, dict):
        if len(set(value.values())) == 1:
            return str(next(iter(value.values())))
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)
