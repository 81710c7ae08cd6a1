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
from mgd_ray.report.load import load_study, load_trials, study_protocols
from mgd_ray.report.tables import GAIN_LABEL, ablation_table, search_table, threshold_table

REPORT_SUBDIR = "report"
CAPTIONS = {
    "ablation": "Loss-term ablation: mIoU (%) of the student on val, mean \u00b1 sample std over "
                "seeds of completed trials (n = seeds; -- = no completed trial); best per "
                "protocol in bold. Gain in percentage points: best MGD row minus supervised only.",
    "search": "Search per protocol: best completed trial's loss weights and confidence threshold "
              "tau, its mIoU (%), trials by status and device-hours spent on all search trials.",
    "threshold": "Threshold sensitivity: mean mIoU (%) and kept-pixel fraction of search trials "
                 "by confidence-threshold bin; early-stopped trials count with their last mIoU.",
    "importance": "Hyperparameter importance of the search (Optuna evaluator over completed "
                  "trials; -- = parameter did not vary or too few trials).",
}


def _write_text(path: str, text: str) -> str:
    staging = path + ".tmp"
    with open(staging, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(staging, path)
    return path


def write_table(out_dir: str, name: str, long: pd.DataFrame, grid: pd.DataFrame,
                bold: pd.DataFrame | None = None, **latex_kwargs: Any) -> dict[str, str]:
    """name.csv (long numbers), name.md and name.tex (display grid); returns {format: path}."""
    base = os.path.join(out_dir, name)
    paths = {"csv": base + ".csv", "md": base + ".md", "tex": base + ".tex"}
    _write_text(paths["csv"], long.to_csv(index=False))
    caption = CAPTIONS[name]
    body = fmt.to_markdown(grid, bold) if len(grid) else "(no rows yet)\n"
    _write_text(paths["md"], f"{caption}\n\n{body}")
    if len(grid):
        tex = fmt.to_latex(grid, bold, caption=caption, label=f"tab:mgd-{name}", **latex_kwargs)
    else:
        tex = "% no rows yet\n"
    _write_text(paths["tex"], tex)
    return paths


def _students(study: dict[str, Any]) -> str:
    students = study.get("students") or study.get("student") or []
    return ", ".join([students] if isinstance(students, str) else map(str, students)) or fmt.MISSING


def report_index(study: dict[str, Any], trials: pd.DataFrame, protocols: list[str],
                 sections: dict[str, str], paths: dict[str, str], today: dt.date) -> str:
    """REPORT.md's text: what the study is, its state, then each table and plot with links.
    `sections` maps table name to its Markdown body; `paths` are relative to RESULTS_DIR."""
    counts = trials["status"].value_counts()
    state = ", ".join(f"{int(counts[s])} {s.replace('_', '-')}" for s in
                      ("completed", "early_stopped", "failed", "running") if s in counts)
    lines = ["# MGD study report", "",
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
             f"- Trials: {len(trials)}" + (f" ({state})" if state else "")]
    if "running" in counts:
        lines += ["", f"**{int(counts['running'])} trial(s) still running or interrupted**: this "
                      "report shows what exists; missing cells are `--`, not zero."]
    titles = {"ablation": "Loss-term ablation", "search": "Search results per protocol",
              "threshold": "Threshold sensitivity", "importance": "Hyperparameter importance"}
    for name, title in titles.items():
        links = " · ".join(f"[{ext.upper()}]({paths[f'{name}_{ext}']})" for ext in ("md", "csv", "tex"))
        lines += ["", f"## {title}", "", links, "", sections[name].rstrip()]
    figures = {"optimization_history": "Optimisation history", "ablation_bars": "Ablation bars",
               "threshold_curve": "Threshold curve"}
    lines += ["", "## Plots"]
    for name, title in figures.items():
        lines += ["", f"### {title}", "", f"![{title}]({paths[name]})"]
    return "\n".join(lines) + "\n"


def generate_report(results_dir: str, evaluator=None, seed: int = 0,
                    today: dt.date | None = None) -> dict[str, str]:
    """Regenerate every table, plot and REPORT.md of a (finished, running or interrupted) study;
    returns {name: absolute path}: "<table>_<md|csv|tex>", the three plot names, "index"."""
    study = load_study(results_dir)
    trials = load_trials(results_dir)
    protocols = study_protocols(study, trials)
    out_dir = os.path.join(results_dir, REPORT_SUBDIR)
    os.makedirs(out_dir, exist_ok=True)

    ablation = ablation_table(trials, protocols)
    search = search_table(trials, protocols, default_device=study.get("device"))
    threshold = threshold_table(trials, protocols)
    importance = importance_table(trials, protocols, evaluator=evaluator, seed=seed)
    text, bold = fmt.ablation_grid(ablation)
    grids = {"ablation": (ablation, text, bold), "search": (search, fmt.search_grid(search), None),
             "threshold": (threshold, fmt.threshold_grid(threshold), None),
             "importance": (importance, fmt.importance_grid(importance), None)}
    paths, sections = {}, {}
    for name, (long, grid, strong) in grids.items():
        extra = {"midrule_before": (GAIN_LABEL,)} if name == "ablation" else {}
        for ext, path in write_table(out_dir, name, long, grid, strong, **extra).items():
            paths[f"{name}_{ext}"] = path
        sections[name] = fmt.to_markdown(grid, strong) if len(grid) else "(no rows yet)"

    paths["optimization_history"] = plots.plot_optimization_history(
        trials, protocols, os.path.join(out_dir, "optimization_history.png"))
    paths["ablation_bars"] = plots.plot_ablation_bars(ablation, os.path.join(out_dir, "ablation_bars.png"))
    paths["threshold_curve"] = plots.plot_threshold_curve(
        threshold, os.path.join(out_dir, "threshold_curve.png"))

    relative = {name: os.path.relpath(path, results_dir) for name, path in paths.items()}
    index = report_index(study, trials, protocols, sections, relative, today or dt.date.today())
    paths["index"] = _write_text(os.path.join(results_dir, "REPORT.md"), index)
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
