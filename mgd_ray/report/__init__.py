"""Ablation tables and plots from a study's results folder: `python -m mgd_ray.report RESULTS_DIR`.

Tables are pure functions of a trials frame (one row per trial, see `load.TRIAL_COLUMNS`), so they
can be checked on a hand-built frame; `generate_report` reads the folder and writes everything.
"""

from mgd_ray.report.format import ablation_grid, miou_cell, to_latex, to_markdown
from mgd_ray.report.importance import importance_table, protocol_importance
from mgd_ray.report.load import (
    ReportInputError,
    load_study,
    load_trials,
    normalize_trials,
    study_protocols,
    trial_row,
)
from mgd_ray.report.plots import (
    plot_ablation_bars,
    plot_optimization_history,
    plot_threshold_curve,
)
from mgd_ray.report.tables import (
    ABLATION_ROWS,
    THRESHOLD_EDGES,
    ablation_table,
    search_table,
    threshold_table,
)
from mgd_ray.report.write import generate_report, report_index, write_table

__all__ = [
    "ABLATION_ROWS",
    "THRESHOLD_EDGES",
    "ReportInputError",
    "ablation_grid",
    "ablation_table",
    "generate_report",
    "importance_table",
    "load_study",
    "load_trials",
    "miou_cell",
    "normalize_trials",
    "plot_ablation_bars",
    "plot_optimization_history",
    "plot_threshold_curve",
    "protocol_importance",
    "report_index",
    "search_table",
    "study_protocols",
    "threshold_table",
    "to_latex",
    "to_markdown",
    "trial_row",
    "write_table",
]
