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
    load_targets,
    load_teachers,
    load_trials,
    normalize_trials,
    study_protocols,
    teacher_mious,
)
from mgd_ray.report.stats import CONFIDENCE, Estimate
from mgd_ray.report.tables import (
    BACKGROUND_MARGIN,
    GAIN_ROWS,
    GAIN_VARIANT,
    GAIN_VARIANTS,
    ablation_table,
    search_table,
    threshold_table,
)
from mgd_ray.schema import write_text_atomic

REPORT_SUBDIR = "report"
CAPTIONS = {
    "ablation": "Loss-term ablation: mIoU (%) on val, mean \u00b1 standard error over seeds of "
    "completed trials (n = seeds; -- = no completed trial); teacher rows: each teacher's own "
    "mIoU. Seeds are paired across rows (a seed fixes the student's initial weights, data order "
    "and CutMix masks in every row). Bold: the best student row of a protocol, only where the "
    f"{100 * CONFIDENCE:.0f}% interval of its per-seed difference from the runner-up lies above "
    "zero; no bold = the rows are not separated (never with one seed). \u2020 = within "
    f"{100 * BACKGROUND_MARGIN:.2f} points of the all-background score (predicting background "
    "everywhere). Gains in percentage points: each MGD row minus supervised only, per seed, mean "
    f"and its {100 * CONFIDENCE:.0f}% Student-t interval [low, high] over the seeds both rows "
    "have.",
    "search": "Search per protocol: best completed trial's loss weights and confidence threshold "
    "tau, its mIoU (%) on the held-out selection set the search ranks trials on (val for "
    "protocol full), trials by status and device-hours spent on all search trials.",
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
        f"- Budget per run: teachers {_per_protocol(budget.get('teacher_iterations'))} "
        "iterations, students "
        f"{_per_protocol(budget.get('student_iterations', study.get('iterations')))} iterations"
        + (f", batch {budget['batch_size']}" if budget.get("batch_size") else "")
        + (f", crop {budget['crop_size']}" if budget.get("crop_size") else ""),
        f"- Seeds per ablation row: {budget.get('ablation_seeds', fmt.MISSING)}; search trials "
        f"per protocol: {budget.get('search_trials', fmt.MISSING)}",
        "- Selection: the search ranks its trials on a held-out selection set of the training "
        "split (unlabeled images whose labels training never uses"
        + (
            f": {_per_protocol(budget['selection_images'])} images"
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
    showcase: dict[str, Any] | None = None,
    targets: dict[str, Any] | None = None,
) -> str:
    """REPORT.md's text: what the run was (with the showcase's record, `showcase`), the study and
    its state, then each table and plot with links. `sections` maps table name to its Markdown
    body; `paths` are relative to RESULTS_DIR; `teachers` (teachers.json) and `models` (best
    students) list files and sizes; `targets` (targets.json) says where shared teacher targets
    could not be computed."""
    counts = trials["status"].value_counts()
    state = ", ".join(
        f"{int(counts[s])} {s.replace('_', '-')}"
        for s in ("completed", "early_stopped", "failed", "running")
        if s in counts
    )
    diverged = [d["iteration"] for d in trials.get("diverged", ()) if isinstance(d, dict)]
    # of the failed ones: the loss stopped being finite (the record's "diverged" field)
    if diverged:
        state += (
            f"; {len(diverged)} diverged, at iteration(s) {', '.join(map(str, sorted(diverged)))}"
        )
    lines = [
        "# MGD study report",
        "",
        *what_the_run_was(study, ablation, trials, showcase),
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
    for protocol, entry in (targets or {}).items():
        if isinstance(entry, dict) and entry.get("fallback"):
            lines += [
                "",
                f"**{protocol}: the shared teacher targets could not be computed** "
                f"({entry['fallback']}); the partial store was deleted and this protocol's "
                "trials ran their teachers themselves (as with --teacher-targets live).",
            ]
    untold = trials.get("optuna_error")
    untold = trials[untold.notna()] if untold is not None else trials.iloc[:0]
    if len(untold):
        lines += [
            "",
            f"**Optuna was never told how {len(untold)} search trial(s) ended** "
            f"({', '.join(map(str, untold['trial_id']))}; the error is each record's "
            "`optuna_error`): TPE did not learn from them; their results are in the tables.",
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
        "learning_curves": "Learning curves (supervised only and MGD, every seed)",
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
        extra = {"midrule_before": (GAIN_ROWS[0][1],)} if name == "ablation" else {}
        for ext, path in write_table(out_dir, name, long, grid, strong, **extra).items():
            paths[f"{name}_{ext}"] = path
        sections[name] = fmt.to_markdown(grid, strong) if len(grid) else "(no rows yet)"

    paths["optimization_history"] = plots.plot_optimization_history(
        trials, protocols, os.path.join(out_dir, "optimization_history.png")
    )
    paths["ablation_bars"] = plots.plot_ablation_bars(
        ablation, os.path.join(out_dir, "ablation_bars.png")
    )
    paths["learning_curves"] = plots.plot_learning_curves(
        trials, protocols, os.path.join(out_dir, "learning_curves.png")
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
        showcase=showcase_record(),
        targets=load_targets(results_dir),
    )
    paths["index"] = write_text_atomic(os.path.join(results_dir, "REPORT.md"), index)
    return {name: os.path.abspath(path) for name, path in paths.items()}


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
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


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
