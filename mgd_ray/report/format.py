"""Turn the long-form tables into display grids of text, and grids into Markdown or LaTeX.

mIoU is shown in percent with two decimals (the papers' convention); a missing value is "--",
never 0. A display grid is a DataFrame of strings plus a same-shaped boolean frame of cells to
set in bold.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from mgd_ray.report.tables import ABLATION_ROWS, GAIN_ROWS, GAIN_VARIANTS, TEACHER_ROWS
from mgd_ray.schema import POINT

MISSING = "--"
PM = "\u00b1"  # the +/- sign; LaTeX gets $\pm$
# a dagger after a cell at the all-background score; LaTeX gets $^\dagger$
BACKGROUND_MARK = "\u2020"
CONFIG_HEADERS = {p.key: p.label for p in POINT}  # a point key -> its column, the paper's name
TEX_HEADERS = {p.label: p.tex for p in POINT} | {"mIoU (%)": r"mIoU (\%)"}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def miou_cell(mean: float, se: float, n: int) -> str:
    """0.7231, 0.0052, 3 -> "72.31 ± 0.52 (n=3)" (± one standard error); one seed has none:
    "72.31 (n=1)"."""
    if n == 0 or _missing(mean):
        return MISSING
    if n == 1 or _missing(se):
        return f"{100 * mean:.2f} (n={n})"
    return f"{100 * mean:.2f} {PM} {100 * se:.2f} (n={n})"


def gain_cell(mean: float, low: float, high: float, n) -> str:
    """A paired gain in points with its 95% interval: 0.0321, 0.011, 0.0532, 3 ->
    "+3.21 [+1.10, +5.32] (n=3)"; without an interval (one seed): "+3.21 (n=1)"."""
    if _missing(mean) or not n:
        return MISSING
    if _missing(low):
        return f"{100 * mean:+.2f} (n={n})"
    return f"{100 * mean:+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] (n={n})"


def number_cell(value, spec: str = ".4g") -> str:
    return MISSING if _missing(value) else format(value, spec)


def ablation_grid(ablation: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows = teacher rows (when the table has them), ablation labels, then the gain rows
    (percentage points, with their 95% interval); columns = protocols. A cell at the
    all-background score ends in a dagger."""
    protocols = list(dict.fromkeys(ablation["protocol"]))
    present = set(ablation["variant"])
    labels = (
        [label for variant, label in TEACHER_ROWS if variant in present]
        + [label for _, label in ABLATION_ROWS]
        + [label for _, label, _ in GAIN_ROWS]
    )
    text = pd.DataFrame(MISSING, index=labels, columns=protocols)
    bold = pd.DataFrame(False, index=labels, columns=protocols)
    for row in ablation.itertuples():
        if row.variant in GAIN_VARIANTS:
            text.loc[row.label, row.protocol] = gain_cell(row.mean, row.low, row.high, row.n)
        else:
            cell = miou_cell(row.mean, row.se, row.n)
            if getattr(row, "background", False) and cell != MISSING:
                cell += f" {BACKGROUND_MARK}"
            text.loc[row.label, row.protocol] = cell
            bold.loc[row.label, row.protocol] = bool(row.best)
    text.index.name = bold.index.name = "Method"
    return text, bold


def search_grid(search: pd.DataFrame) -> pd.DataFrame:
    """One row per protocol: best configuration, its mIoU, trial counts, compute spent."""
    rows = []
    for row in search.to_dict("records"):
        compute = [
            f"{row[key]:.3g} {unit}"
            for key, unit in (("gpu_hours", "GPU-hours"), ("cpu_hours", "CPU-hours"))
            if not _missing(row[key])
        ]
        rows.append(
            {
                "Protocol": row["protocol"],
                **{header: number_cell(row[key]) for key, header in CONFIG_HEADERS.items()},
                "mIoU (%)": MISSING if _missing(row["miou"]) else f"{100 * row['miou']:.2f}",
                "Trials": str(row["trials"]),
                "Completed": str(row["completed"]),
                "Early-stopped": str(row["early_stopped"]),
                "Failed": str(row["failed"]),
                "Running": str(row["running"]),
                "Compute": " + ".join(compute) if compute else MISSING,
            }
        )
    return pd.DataFrame(rows).set_index("Protocol") if rows else pd.DataFrame()


def threshold_grid(threshold: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "Protocol": r["protocol"],
            "tau": r["bin"],
            "Trials": str(r["n"]),
            "mIoU (%)": MISSING if _missing(r["miou"]) else f"{100 * r['miou']:.2f}",
            "Kept fraction": number_cell(r["kept_fraction"], ".3f"),
        }
        for r in threshold.to_dict("records")
    ]
    return pd.DataFrame(rows).set_index("Protocol") if rows else pd.DataFrame()


def importance_grid(importance: pd.DataFrame) -> pd.DataFrame:
    rows = [
        {
            "Protocol": r["protocol"],
            **{header: number_cell(r[key], ".3f") for key, header in CONFIG_HEADERS.items()},
            "Trials": str(r["n_trials"]),
            "Evaluator": r["evaluator"],
            "Note": r["note"] or "",
        }
        for r in importance.to_dict("records")
    ]
    return pd.DataFrame(rows).set_index("Protocol") if rows else pd.DataFrame()


def to_markdown(grid: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A GitHub Markdown table; the index is the first column."""

    def cell(text: str, strong: bool) -> str:
        text = str(text).replace("|", r"\|")
        return f"**{text}**" if strong and text != MISSING else text

    header = [grid.index.name or ""] + [str(c) for c in grid.columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + [":---:"] * len(grid.columns)) + "|",
    ]
    for i, name in enumerate(grid.index):
        cells = [
            cell(grid.iat[i, j], bold is not None and bool(bold.iat[i, j]))
            for j in range(grid.shape[1])
        ]
        lines.append("| " + " | ".join([cell(name, False)] + cells) + " |")
    return "\n".join(lines) + "\n"


def tex_escape(text: str) -> str:
    text = re.sub(r"([&%$#_{}])", r"\\\1", str(text))
    text = text.replace("~", r"\textasciitilde{}").replace("^", r"\textasciicircum{}")
    text = text.replace(PM, r"$\pm$").replace(BACKGROUND_MARK, r"$^\dagger$")
    return re.sub(r"\bL\\_([PIR])\b", r"$L_\1$", text)  # loss names as math: + $L_P$ + $L_I$


def to_latex(
    grid: pd.DataFrame,
    bold: pd.DataFrame | None = None,
    caption: str = "",
    label: str = "",
    midrule_before: tuple[str, ...] = (),
) -> str:
    """A booktabs table (\\toprule / \\midrule / \\bottomrule) in a table float; a \\midrule
    also precedes each row named in midrule_before (e.g. the gain row)."""

    def head(text: str) -> str:
        return TEX_HEADERS.get(text, tex_escape(text))

    def cell(text: str, strong: bool) -> str:
        return (
            rf"\textbf{{{tex_escape(text)}}}" if strong and text != MISSING else tex_escape(text)
        )

    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{tex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [
        r"\begin{tabular}{l" + "c" * grid.shape[1] + "}",
        r"\toprule",
        " & ".join([head(grid.index.name or "")] + [head(str(c)) for c in grid.columns]) + r" \\",
        r"\midrule",
    ]
    for i, name in enumerate(grid.index):
        cells = [
            cell(grid.iat[i, j], bold is not None and bool(bold.iat[i, j]))
            for j in range(grid.shape[1])
        ]
        if name in midrule_before:
            lines.append(r"\midrule")
        lines.append(" & ".join([tex_escape(name)] + cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"
