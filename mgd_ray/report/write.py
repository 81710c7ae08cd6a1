"""Write every table as Markdown, CSV and LaTeX plus the PNG plots into RESULTS_DIR/report/, and
the index RESULTS_DIR/REPORT.md. Nothing else is ever written.

The files are derived: regenerating replaces them (each atomically, so a reader of a running
study's report never sees half a file). CSV files hold the long-form numbers (mIoU as a fraction,
missing as an empty field); Markdown and LaTeX hold the display text (percent, "--").
"""

from __future__ import annotations

import datetime as dt
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
    study_protocols,
    teacher_mious,
)
from mgd_ray.report.opening import per_protocol, showcase_record, what_the_run_was
from mgd_ray.report.stats import CONFIDENCE
from mgd_ray.report.tables import (
    BACKGROUND_MARGIN,
    GAIN_ROWS,
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
        f"- Student iterations per trial: {per_protocol(study.get('iterations'))}; "
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
