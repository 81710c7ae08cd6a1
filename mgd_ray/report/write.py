"""Write every table as Markdown, CSV and LaTeX plus the PNG plots into RESULTS_DIR/report/, and
the index RESULTS_DIR/REPORT.md. Nothing else is ever written.

The files are derived: regenerating replaces them (each atomically, so a reader of a running
study's report never sees half a file). CSV files hold the long-form numbers (mIoU as a fraction,
missing as an empty field); Markdown and LaTeX hold the display text (percent, "--").
"""

from __future__ import annotations

import datetime as dt
import math
import os
from typing import Any

import pandas as pd

from mgd_ray.report import format as fmt
from mgd_ray.report import plots
from mgd_ray.report.importance import importance_table
from mgd_ray.report.load import (
    load_study,
    load_teachers,
    load_trials,
    study_protocols,
    teacher_mious,
)
from mgd_ray.report.tables import (
    BACKGROUND_MARGIN,
    GAIN_LABEL,
    GAIN_VARIANT,
    SINGLE_SEED_MARGIN,
    ablation_table,
    search_table,
    threshold_table,
)
from mgd_ray.schema import write_text_atomic

REPORT_SUBDIR = "report"
CAPTIONS = {
    "ablation": "Loss-term ablation: mIoU (%) on val, mean \u00b1 sample std over seeds of "
    "completed trials (n = seeds; -- = no completed trial); teacher rows: each "
    "teacher's own mIoU. Bold: the best student row of a protocol, only where it "
    "leads the runner-up by more than the larger seed std of the two (by more than "
    f"{100 * SINGLE_SEED_MARGIN:.2f} points when neither has a spread); no bold = "
    f"the rows are not separated. \u2020 = within {100 * BACKGROUND_MARGIN:.2f} "
    "points of the all-background score (predicting background everywhere). Gain in "
    "percentage points: best MGD row minus supervised only.",
    "search": "Search per protocol: best completed trial's loss weights and confidence threshold "
    "tau, its mIoU (%), trials by status and device-hours spent on all search trials.",
    "threshold": "Threshold sensitivity: mean mIoU (%) and kept-pixel fraction of search trials "
    "by confidence-threshold bin; early-stopped trials count with their last mIoU.",
    "importance": "Hyperparameter importance of the search (Optuna evaluator over completed "
    "trials; -- = parameter did not vary or too few trials).",
}


def write_table(
    out_dir: str,
    name: str,
    long: pd.DataFrame,
    grid: pd.DataFrame,
    bold: pd.DataFrame | None = None,
    **latex_kwargs: Any,
) -> dict[str, str]:
    """name.csv (long numbers), name.md and name.tex (display grid); returns {format: path}."""
    base = os.path.join(out_dir, name)
    paths = {"csv": base + ".csv", "md": base + ".md", "tex": base + ".tex"}
    write_text_atomic(paths["csv"], long.to_csv(index=False))
    caption = CAPTIONS[name]
    body = fmt.to_markdown(grid, bold) if len(grid) else "(no rows yet)\n"
    write_text_atomic(paths["md"], f"{caption}\n\n{body}")
    if len(grid):
        tex = fmt.to_latex(grid, bold, caption=caption, label=f"tab:mgd-{name}", **latex_kwargs)
    else:
        tex = "% no rows yet\n"
    write_text_atomic(paths["tex"], tex)
    return paths


def _students(study: dict[str, Any]) -> str:
    students = study.get("students") or study.get("student") or []
    return (
        ", ".join([students] if isinstance(students, str) else map(str, students)) or fmt.MISSING
    )


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


def what_the_run_was(study: dict[str, Any], ablation: pd.DataFrame | None = None) -> list[str]:
    """REPORT.md's opening: dataset, regime, budget per run, seeds, and one sentence on what this
    budget can and cannot show, with the command whose results separate the rows."""
    budget = study.get("budget") or {}
    background = study.get("background_miou")
    lines = [
        "## What this run was",
        "",
        f"- Dataset: {study.get('dataset', fmt.MISSING)}"
        + (f" ({study['num_classes']} classes)" if study.get("num_classes") else "")
        + f"; regime: {regime(study)}; device: {study.get('device', fmt.MISSING)}",
        f"- Budget per run: teachers {_per_protocol(budget.get('teacher_iterations'))} "
        "iterations, students "
        f"{_per_protocol(budget.get('student_iterations', study.get('iterations')))} iterations"
        + (f", batch {budget['batch_size']}" if budget.get("batch_size") else "")
        + (f", crop {budget['crop_size']}" if budget.get("crop_size") else ""),
        f"- Seeds per ablation row: {budget.get('ablation_seeds', fmt.MISSING)}; search trials "
        f"per protocol: {budget.get('search_trials', fmt.MISSING)}",
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
    return lines


def mgd_against_supervised(ablation: pd.DataFrame) -> list[str]:
    """Per protocol with both rows measured: whether MGD with the paper's weights leads supervised
    only by more than the report's margin (the larger seed std of the two rows, or 2 points when
    neither has a spread), and when not, why: teachers at the background level, teachers too close
    to the supervised student (within the margin), or else the budget (too few iterations or
    seeds for the gain to exceed the margin)."""
    lines = []
    for protocol, rows in ablation.groupby("protocol", sort=False):
        by_variant = rows.set_index("variant")
        if not {"supervised", "mgd_paper"} <= set(by_variant.index):
            continue
        sup, mgd = by_variant.loc["supervised"], by_variant.loc["mgd_paper"]
        if not (sup["n"] and mgd["n"]) or pd.isna(sup["n"]) or pd.isna(mgd["n"]):
            continue
        spreads = [s for s in (sup["std"], mgd["std"]) if not math.isnan(s)]
        margin = max(spreads) if spreads else SINGLE_SEED_MARGIN
        gain = mgd["mean"] - sup["mean"]
        said = (
            f"{protocol}: MGD with the paper's weights {100 * mgd['mean']:.2f} against "
            f"supervised only {100 * sup['mean']:.2f}, {100 * gain:+.2f} points (margin "
            f"{100 * margin:.2f})"
        )
        teachers = by_variant.loc[
            [v for v in ("teacher_deep", "teacher_wide") if v in by_variant.index]
        ]
        teachers = teachers[teachers["n"].fillna(0) > 0]
        best_teacher = teachers["mean"].max() if len(teachers) else math.nan
        if gain > margin:
            lines.append(f"{said}: **MGD leads by more than the margin**.")
        elif len(teachers) and teachers["background"].all():
            lines.append(f"{said}: not ahead; the teachers score at the all-background level.")
        elif not math.isnan(best_teacher) and best_teacher - sup["mean"] <= margin:
            lines.append(
                f"{said}: not ahead; the teachers are too close to the students (best teacher "
                f"{100 * best_teacher:.2f}, {100 * (best_teacher - sup['mean']):+.2f} points "
                "over the supervised student: within the margin, they have little to teach)."
            )
        else:
            lines.append(
                f"{said}: not ahead by more than the margin at this budget (more iterations or "
                "seeds per row would be needed to tell)."
            )
    return lines


def _verdict(ablation: pd.DataFrame | None, command: str | None, note: str = "") -> str:
    """One sentence: whether the rows are separated at this budget, and what to run if not."""
    students = (
        ablation[~ablation["variant"].isin([GAIN_VARIANT, "teacher_deep", "teacher_wide"])]
        if ablation is not None
        else pd.DataFrame()
    )
    measured = students[students["n"].fillna(0) > 0] if len(students) else students
    teachers = (
        ablation[ablation["variant"].isin(["teacher_deep", "teacher_wide"])]
        if ablation is not None
        else pd.DataFrame()
    )
    weak_teachers = bool(len(teachers)) and bool(teachers["background"].any())
    separated = bool(len(measured)) and bool(measured["best"].any())
    run = (
        f" A larger budget may separate the rows (not measured to do so): run `{command}`{note}."
        if command
        else ""
    )
    if not len(measured):
        return "**No ablation row has finished yet.**" + run
    if separated and not weak_teachers:
        return (
            "**At this budget some rows are separated**: a bold cell leads its runner-up by more "
            "than the seed spread; unbolded protocols are not separated." + run
        )
    reasons = (
        [] if separated else ["its ablation rows do not differ by more than their seed spread"]
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


def report_index(
    study: dict[str, Any],
    trials: pd.DataFrame,
    protocols: list[str],
    sections: dict[str, str],
    paths: dict[str, str],
    today: dt.date,
    ablation: pd.DataFrame | None = None,
    teachers: dict[str, Any] | None = None,
    models: dict[str, Any] | None = None,
) -> str:
    """REPORT.md's text: what the run was, the study and its state, then each table and plot
    with links. `sections` maps table name to its Markdown body; `paths` are relative to
    RESULTS_DIR; `teachers` (teachers.json) and `models` (best students) list files and sizes."""
    counts = trials["status"].value_counts()
    state = ", ".join(
        f"{int(counts[s])} {s.replace('_', '-')}"
        for s in ("completed", "early_stopped", "failed", "running")
        if s in counts
    )
    diverged = [d["iteration"] for d in trials.get("diverged", ()) if isinstance(d, dict)]
    if (
        diverged
    ):  # of the failed ones: the loss stopped being finite (the record's "diverged" field)
        state += (
            f"; {len(diverged)} diverged, at iteration(s) {', '.join(map(str, sorted(diverged)))}"
        )
    lines = [
        "# MGD study report",
        "",
        *what_the_run_was(study, ablation),
        "",
        "## Study",
        "",
        f"- Dataset: {study.get('dataset', fmt.MISSING)}"
        + (f" ({study['num_classes']} classes)" if study.get("num_classes") else ""),
        f"- Protocols: {', '.join(protocols) or fmt.MISSING}",
        f"- Student(s): {_students(study)}",
        f"- Teachers: deep {study.get('teacher_deep', fmt.MISSING)}, "
        f"wide {study.get('teacher_wide', fmt.MISSING)}",
        f"- Student iterations per trial: {_per_protocol(study.get('iterations'))}; "
        f"device: {study.get('device', fmt.MISSING)}",
        f"- Study created: {study.get('created', fmt.MISSING)}; report generated: "
        f"{today.isoformat()}",
        f"- Trials: {len(trials)}" + (f" ({state})" if state else ""),
    ]
    if "running" in counts:
        lines += [
            "",
            f"**{int(counts['running'])} trial(s) still running or interrupted**: this "
            "report shows what exists; missing cells are `--`, not zero.",
        ]
    lines += _files_section(teachers or {}, models or {})
    titles = {
        "ablation": "Loss-term ablation",
        "search": "Search results per protocol",
        "threshold": "Threshold sensitivity",
        "importance": "Hyperparameter importance",
    }
    for name, title in titles.items():
        links = " · ".join(
            f"[{ext.upper()}]({paths[f'{name}_{ext}']})" for ext in ("md", "csv", "tex")
        )
        lines += ["", f"## {title}", "", links, "", sections[name].rstrip()]
    figures = {
        "optimization_history": "Optimisation history",
        "ablation_bars": "Ablation bars",
        "threshold_curve": "Threshold curve",
    }
    lines += ["", "## Plots"]
    for name, title in figures.items():
        lines += ["", f"### {title}", "", f"![{title}]({paths[name]})"]
    return "\n".join(lines) + "\n"


def generate_report(
    results_dir: str, evaluator=None, seed: int = 0, today: dt.date | None = None
) -> dict[str, str]:
    """Regenerate every table, plot and REPORT.md of a (finished, running or interrupted) study;
    returns {name: absolute path}: "<table>_<md|csv|tex>", the three plot names, "index"."""
    study = load_study(results_dir)
    trials = load_trials(results_dir)
    protocols = study_protocols(study, trials)
    out_dir = os.path.join(results_dir, REPORT_SUBDIR)
    os.makedirs(out_dir, exist_ok=True)

    teachers = load_teachers(results_dir)
    ablation = ablation_table(
        trials,
        protocols,
        teachers=teacher_mious(teachers),
        background=study.get("background_miou"),
    )
    search = search_table(trials, protocols, default_device=study.get("device"))
    threshold = threshold_table(trials, protocols)
    importance = importance_table(trials, protocols, evaluator=evaluator, seed=seed)
    text, bold = fmt.ablation_grid(ablation)
    grids = {
        "ablation": (ablation, text, bold),
        "search": (search, fmt.search_grid(search), None),
        "threshold": (threshold, fmt.threshold_grid(threshold), None),
        "importance": (importance, fmt.importance_grid(importance), None),
    }
    paths, sections = {}, {}
    for name, (long, grid, strong) in grids.items():
        extra = {"midrule_before": (GAIN_LABEL,)} if name == "ablation" else {}
        for ext, path in write_table(out_dir, name, long, grid, strong, **extra).items():
            paths[f"{name}_{ext}"] = path
        sections[name] = fmt.to_markdown(grid, strong) if len(grid) else "(no rows yet)"

    paths["optimization_history"] = plots.plot_optimization_history(
        trials, protocols, os.path.join(out_dir, "optimization_history.png")
    )
    paths["ablation_bars"] = plots.plot_ablation_bars(
        ablation, os.path.join(out_dir, "ablation_bars.png")
    )
    paths["threshold_curve"] = plots.plot_threshold_curve(
        threshold, os.path.join(out_dir, "threshold_curve.png")
    )

    relative = {name: os.path.relpath(path, results_dir) for name, path in paths.items()}
    index = report_index(
        study,
        trials,
        protocols,
        sections,
        relative,
        today or dt.date.today(),
        ablation=ablation,
        teachers=teachers,
        models=_best_students(results_dir),
    )
    paths["index"] = write_text_atomic(os.path.join(results_dir, "REPORT.md"), index)
    return {name: os.path.abspath(path) for name, path in paths.items()}


def _per_protocol(value) -> str:
    """study.json's per-protocol numbers ({"1/8": 40, ...}) as text; one number when all agree."""
    if value is None:
        return fmt.MISSING
    if isinstance(value, dict):
        if len(set(value.values())) == 1:
            return str(next(iter(value.values())))
        return ", ".join(f"{k}: {v}" for k, v in value.items())
    return str(value)


def _size(num_bytes) -> str:
    return fmt.MISSING if num_bytes is None else f"{num_bytes / 1e6:.0f} MB"


def _best_students(results_dir: str) -> dict[str, Any]:
    """{relative .pt path: its .json sidecar} of RESULTS_DIR/models/*/*.pt (exported students)."""
    import glob
    import json

    found = {}
    for path in sorted(glob.glob(os.path.join(results_dir, "models", "*", "*.pt"))):
        try:
            with open(path[:-3] + ".json") as f:
                found[os.path.relpath(path, results_dir)] = json.load(f)
        except (OSError, ValueError):
            found[os.path.relpath(path, results_dir)] = {}
        found[os.path.relpath(path, results_dir)]["size_bytes"] = os.path.getsize(path)
    return found


def _files_section(teachers: dict[str, Any], models: dict[str, Any]) -> list[str]:
    """Where the trained models are: the best students and the cached teachers, with sizes."""
    lines = ["", "## Trained models", ""]
    if models:
        lines.append(
            "Best students (plain state dicts: `build_model(arch, num_classes)` then "
            "`load_state_dict(torch.load(path))`; the `.json` beside each holds its config and "
            "scores):"
        )
        for path, info in models.items():
            miou = info.get("miou")
            lines.append(
                f"- `{path}` ({_size(info.get('size_bytes'))}): {info.get('arch', fmt.MISSING)}, "
                f"{info.get('variant', fmt.MISSING)}, val mIoU "
                + (f"{100 * miou:.2f}" if isinstance(miou, (int, float)) else fmt.MISSING)
            )
    else:
        lines.append("Best students: none exported yet.")
    if teachers:
        lines += [
            "",
            "Teachers (cached; later studies with the same data, protocol and schedule reuse "
            "them):",
        ]
        total = 0
        for protocol, roles in teachers.items():
            for role, entry in (roles or {}).items():
                entry = entry or {}
                total += entry.get("size_bytes") or 0
                miou = entry.get("miou")
                lines.append(
                    f"- {protocol} {role} ({entry.get('arch', fmt.MISSING)}): "
                    f"`{entry.get('path', fmt.MISSING)}`, {_size(entry.get('size_bytes'))}, "
                    "val mIoU "
                    + (f"{100 * miou:.2f}" if isinstance(miou, (int, float)) else fmt.MISSING)
                )
        lines.append(f"- total: {_size(total)}")
    return lines
