"""mgd_ray.report on hand-built trial frames and a hand-written results folder.

Every expected number below is computed by hand in the comments (means, sample stds, sums)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import optuna
import pandas as pd
import pytest

from mgd_ray.report import (
    ReportInputError,
    ablation_grid,
    ablation_table,
    generate_report,
    importance_table,
    load_study,
    load_trials,
    normalize_trials,
    search_table,
    study_protocols,
    threshold_table,
    to_latex,
    to_markdown,
)
from mgd_ray.report.format import importance_grid, search_grid, threshold_grid

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CFG = dict(
    w_sup=1.0, w_pixel=1.0, lambda_semantic=0.002, lambda_region=100.0, confidence_threshold=0.0
)


def trial(
    trial_id, protocol, kind, variant, status, miou, seed=0, ended="2025-01-01T01:00", **extra
):
    return dict(
        trial_id=trial_id,
        protocol=protocol,
        kind=kind,
        variant=variant,
        status=status,
        miou=miou,
        seed=seed,
        ended_at=ended,
        **{**CFG, **extra},
    )


def ablation_frame() -> pd.DataFrame:
    rows = [
        # 1/8 supervised: seeds 0,1,2 = 0.40, 0.42, 0.44 -> mean 0.42, sample std 0.02
        trial(
            "s0-old",
            "1/8",
            "ablation",
            "supervised",
            "completed",
            0.10,
            seed=0,
            ended="2025-01-01T00:00",
        ),  # re-run seed 0: the later trial replaces it
        trial("s0", "1/8", "ablation", "supervised", "completed", 0.40, seed=0),
        trial("s1", "1/8", "ablation", "supervised", "completed", 0.42, seed=1),
        trial("s2", "1/8", "ablation", "supervised", "completed", 0.44, seed=2),
        trial("s3", "1/8", "ablation", "supervised", "failed", 0.99, seed=3),  # never counts
        trial("s4", "1/8", "ablation", "supervised", "running", 0.90, seed=4),  # not final
        trial("p0", "1/8", "ablation", "pixel", "completed", 0.50),  # single seed
        # mgd_paper 0.50, 0.54 -> mean 0.52, std sqrt(2 * 0.02^2 / 1) = 0.028284
        trial("m0", "1/8", "ablation", "mgd_paper", "completed", 0.50, seed=0),
        trial("m1", "1/8", "ablation", "mgd_paper", "completed", 0.54, seed=1),
        trial("b0", "1/8", "ablation", "mgd_best", "failed", None),  # 1/8 mgd_best missing
        trial("b1", "1/4", "ablation", "mgd_best", "completed", 0.60),  # 1/4: no supervised
        trial("x", "1/4", "search", "search", "completed", 0.99),  # search trials not ablation
    ]
    return pd.DataFrame(rows)


def cell(table, variant, protocol):
    return table[(table["variant"] == variant) & (table["protocol"] == protocol)].iloc[0]


def test_ablation_means_stds_missing_and_gain():
    table = ablation_table(ablation_frame(), ["1/8", "1/4", "1/2"])
    assert list(table["variant"].unique()) == [
        "supervised",
        "pixel",
        "pixel_semantic",
        "pixel_region",
        "mgd_paper",
        "mgd_best",
        "gain",
        "gain_best",
    ]
    sup = cell(table, "supervised", "1/8")
    assert (
        sup["n"] == 3 and sup["mean"] == pytest.approx(0.42) and sup["std"] == pytest.approx(0.02)
    )
    # se = 0.02 / sqrt(3) = 0.011547; t(0.975, 2 dof) = 4.302653 -> half-width 0.049683
    assert sup["se"] == pytest.approx(0.011547, abs=1e-6)
    assert (sup["low"], sup["high"]) == pytest.approx((0.370317, 0.469683), abs=1e-6)
    pix = cell(table, "pixel", "1/8")
    assert pix["n"] == 1 and pix["mean"] == pytest.approx(0.5) and math.isnan(pix["std"])
    paper = cell(table, "mgd_paper", "1/8")
    assert paper["mean"] == pytest.approx(0.52) and paper["std"] == pytest.approx(
        0.02 * math.sqrt(2)
    )
    for variant, protocol in [
        ("mgd_best", "1/8"),
        ("pixel_region", "1/8"),
        ("supervised", "1/4"),
        ("supervised", "1/2"),
    ]:
        missing = cell(table, variant, protocol)
        assert missing["n"] == 0 and math.isnan(missing["mean"])  # missing, never 0.0
    # 1/8: mgd_paper (seeds 0, 1) leads pixel (seed 0 only): one paired seed has no interval.
    # 1/4: a single measured row beats nothing. So no cell is marked best.
    assert not table["best"].any()
    # Paired by seed over the seeds both rows have (0, 1): 0.50 - 0.40 = 0.10, 0.54 - 0.42 = 0.12
    # -> mean 0.11, std 0.014142, se 0.01, t(0.975, 1 dof) = 12.706205 -> [-0.017062, 0.237062]
    gain = cell(table, "gain", "1/8")
    assert gain["mean"] == pytest.approx(0.11) and gain["n"] == 2
    assert gain["se"] == pytest.approx(0.01)
    assert (gain["low"], gain["high"]) == pytest.approx((-0.017062, 0.237062), abs=1e-6)
    assert math.isnan(cell(table, "gain_best", "1/8")["mean"])  # no mgd_best in 1/8
    assert math.isnan(cell(table, "gain", "1/4")["mean"])  # no supervised baseline in 1/4
    assert math.isnan(cell(table, "gain", "1/2")["mean"])

    text, bold = ablation_grid(table)
    assert text.loc["Supervised only", "1/8"] == "42.00 \u00b1 1.15 (n=3)"  # +- one se
    assert text.loc["+ L_P", "1/8"] == "50.00 (n=1)"
    assert text.loc["MGD (paper weights)", "1/8"] == "52.00 \u00b1 2.00 (n=2)"  # 0.028284/sqrt 2
    assert text.loc["MGD (best found)", "1/8"] == "--"
    paper_gain, best_gain = (
        "Gain of MGD (paper weights) over supervised",
        "Gain of MGD (best found) over supervised",
    )
    assert text.loc[paper_gain, "1/8"] == "+11.00 [-1.71, +23.71] (n=2)"
    assert text.loc[paper_gain, "1/4"] == "--" and text.loc[best_gain, "1/8"] == "--"
    assert (text["1/2"] == "--").all() and not bold["1/2"].any()
    assert int(bold.to_numpy().sum()) == 0


def test_equal_rows_get_no_best_and_background_rows_are_flagged():
    # 1/8: every row at 0.0940, the all-background score (the smoke study's table): no best, all
    #      flagged.
    # 1/4: supervised 0.30, 0.32 vs MGD 0.36, 0.38 on seeds 0, 1: paired differences 0.06 and
    #      0.06, interval [0.06, 0.06] above zero -> MGD best.
    # 1/2: one seed each, 0.300 vs 0.315: one pair has no interval -> no best.
    rows = [
        trial(f"e{v}", "1/8", "ablation", v, "completed", 0.0940)
        for v in ("supervised", "pixel", "mgd_paper", "mgd_best")
    ]
    rows += [
        trial("s0", "1/4", "ablation", "supervised", "completed", 0.30, seed=0),
        trial("s1", "1/4", "ablation", "supervised", "completed", 0.32, seed=1),
        trial("m0", "1/4", "ablation", "mgd_paper", "completed", 0.36, seed=0),
        trial("m1", "1/4", "ablation", "mgd_paper", "completed", 0.38, seed=1),
        trial("h0", "1/2", "ablation", "supervised", "completed", 0.300),
        trial("h1", "1/2", "ablation", "mgd_paper", "completed", 0.315),
    ]
    teachers = {"1/8": {"deep": 0.098, "wide": 0.116}, "1/4": {"deep": 0.5, "wide": None}}
    table = ablation_table(
        pd.DataFrame(rows), ["1/8", "1/4", "1/2"], teachers=teachers, background=0.0940
    )
    best = table[table["best"]]
    assert list(zip(best["variant"], best["protocol"])) == [("mgd_paper", "1/4")]
    flagged = table[table["background"]]
    # within 0.01 of 0.094: the four 1/8 rows and the 0.098 teacher; 0.116 is 2.2 points above
    assert sorted(zip(flagged["variant"], flagged["protocol"])) == sorted(
        [(v, "1/8") for v in ("supervised", "pixel", "mgd_paper", "mgd_best", "teacher_deep")]
    )
    assert cell(table, "teacher_wide", "1/8")["mean"] == pytest.approx(0.116)
    assert math.isnan(cell(table, "teacher_wide", "1/4")["mean"])  # unknown: missing, not zero

    text, bold = ablation_grid(table)
    assert list(text.index[:2]) == ["Teacher T_D (deep)", "Teacher T_W (wide)"]
    assert text.loc["Supervised only", "1/8"] == "9.40 (n=1) \u2020"
    assert text.loc["Teacher T_D (deep)", "1/8"] == "9.80 (n=1) \u2020"
    assert text.loc["Teacher T_W (wide)", "1/8"] == "11.60 (n=1)"
    assert (
        not bold["1/8"].any() and not bold["1/2"].any() and bold.loc["MGD (paper weights)", "1/4"]
    )
    assert "**" not in to_markdown(text[["1/8"]], bold[["1/8"]])
    assert r"$^\dagger$" in to_latex(text, bold)

    # However large the lead, one seed each is never separated.
    single = pd.DataFrame(
        [
            trial("a", "1/8", "ablation", "supervised", "completed", 0.30),
            trial("b", "1/8", "ablation", "pixel", "completed", 0.60),
        ]
    )
    assert not ablation_table(single, ["1/8"])["best"].any()
    # Three paired seeds: pixel - supervised = 0.02, 0.03, 0.04 -> mean 0.03, std 0.01,
    # se 0.005774, half-width 4.302653 * 0.005774 = 0.024841 -> [0.005159, 0.054841]: ahead,
    # although the rows' own spreads (0.1 each) overlap by far.
    paired = pd.DataFrame(
        [
            trial(
                f"{v}{k}",
                "1/8",
                "ablation",
                v,
                "completed",
                base + 0.1 * k + extra * (k + 2),
                seed=k,
            )
            for k in range(3)
            for v, base, extra in (("supervised", 0.30, 0.0), ("pixel", 0.30, 0.01))
        ]
    )
    table = ablation_table(paired, ["1/8"])
    assert list(table.query("best")["variant"]) == ["pixel"]
    assert cell(table, "pixel", "1/8")["std"] == pytest.approx(0.11)
    # ... but the same values with pixel's seeds shuffled are not (the pairs no longer line up):
    # differences 0.24, -0.08, -0.07 -> mean 0.03, its interval wide around zero.
    shuffled = paired.assign(
        seed=[s if v == "supervised" else (s + 1) % 3 for s, v in zip(paired.seed, paired.variant)]
    )
    assert not ablation_table(shuffled, ["1/8"])["best"].any()


def search_frame() -> pd.DataFrame:
    rows = [
        trial(
            "a",
            "1/8",
            "search",
            "search",
            "completed",
            0.45,
            device="gpu",
            device_hours=0.5,
            w_pixel=0.5,
            confidence_threshold=0.3,
        ),
        trial(
            "b",
            "1/8",
            "search",
            "search",
            "completed",
            0.55,
            device="gpu",
            device_hours=0.25,
            w_pixel=2.0,
            lambda_semantic=0.001,
            lambda_region=30.0,
            confidence_threshold=0.8,
        ),
        # higher mIoU but stopped early: not comparable with a full run, so never "best"
        trial(
            "c", "1/8", "search", "search", "early_stopped", 0.60, device="gpu", device_hours=0.125
        ),
        trial("d", "1/8", "search", "search", "failed", None, device="gpu", device_hours=0.0625),
        trial("e", "1/8", "search", "search", "running", 0.30, device="gpu", device_hours=None),
        trial("f", "1/4", "search", "search", "failed", None, device="cpu", device_hours=0.1),
        trial(
            "g", "1/8", "ablation", "supervised", "completed", 0.9, device="gpu", device_hours=9
        ),
    ]
    return pd.DataFrame(rows)


def test_search_table_best_config_counts_and_compute():
    table = search_table(search_frame(), ["1/8", "1/4", "1/2"]).set_index("protocol")
    top = table.loc["1/8"]
    assert top["best_trial"] == "b" and top["miou"] == pytest.approx(0.55)
    assert (
        top["w_sup"],
        top["w_pixel"],
        top["lambda_semantic"],
        top["lambda_region"],
        top["confidence_threshold"],
    ) == (1.0, 2.0, 0.001, 30.0, 0.8)
    assert (
        top["trials"],
        top["completed"],
        top["early_stopped"],
        top["failed"],
        top["running"],
    ) == (5, 2, 1, 1, 1)
    assert top["gpu_hours"] == pytest.approx(0.5 + 0.25 + 0.125 + 0.0625)  # ablation excluded
    assert math.isnan(top["cpu_hours"])
    quarter = table.loc["1/4"]
    assert quarter["trials"] == 1 and quarter["failed"] == 1 and math.isnan(quarter["miou"])
    assert quarter["cpu_hours"] == pytest.approx(0.1) and math.isnan(quarter["gpu_hours"])
    assert table.loc["1/2", "trials"] == 0 and math.isnan(table.loc["1/2", "gpu_hours"])

    grid = search_grid(table.reset_index())
    assert grid.loc["1/8", "Compute"] == "0.938 GPU-hours"
    assert grid.loc["1/4", "Compute"] == "0.1 CPU-hours"
    assert grid.loc["1/2", "Compute"] == "--" and grid.loc["1/2", "mIoU (%)"] == "--"
    assert grid.loc["1/8", "mIoU (%)"] == "55.00" and grid.loc["1/8", "lambda_R"] == "30"


def test_search_table_default_device_fills_missing_device():
    rows = [trial("a", "1/8", "search", "search", "completed", 0.4, device_hours=2.0)]
    table = search_table(pd.DataFrame(rows), ["1/8"], default_device="cpu")
    assert table.loc[0, "cpu_hours"] == 2.0 and math.isnan(table.loc[0, "gpu_hours"])


def test_threshold_bins_edges_and_statuses():
    rows = [
        trial(
            "t0",
            "1/8",
            "search",
            "search",
            "completed",
            0.40,
            confidence_threshold=0.0,
            kept_fraction=1.0,
        ),
        trial(
            "t1",
            "1/8",
            "search",
            "search",
            "completed",
            0.50,
            confidence_threshold=0.5,
            kept_fraction=0.8,
        ),
        trial(
            "t2",
            "1/8",
            "search",
            "search",
            "completed",
            0.52,
            confidence_threshold=0.69,
            kept_fraction=0.6,
        ),
        trial(
            "t3",
            "1/8",
            "search",
            "search",
            "early_stopped",
            0.44,
            confidence_threshold=0.75,
            kept_fraction=0.5,
        ),
        trial(
            "t4",
            "1/8",
            "search",
            "search",
            "completed",
            0.30,
            confidence_threshold=0.9,
            kept_fraction=0.2,
        ),
        trial(
            "t5",
            "1/8",
            "search",
            "search",
            "completed",
            0.20,
            confidence_threshold=1.0,
            kept_fraction=0.0,
        ),
        trial("t6", "1/8", "search", "search", "failed", None, confidence_threshold=0.8),
        trial("t7", "1/8", "search", "search", "running", 0.9, confidence_threshold=0.85),
    ]
    table = threshold_table(pd.DataFrame(rows), ["1/8"])
    assert list(table["bin"]) == ["[0, 0.5)", "[0.5, 0.7)", "[0.7, 0.8)", "[0.8, 0.9)", "[0.9, 1]"]
    assert list(table["n"]) == [1, 2, 1, 0, 2]
    np.testing.assert_allclose(table["miou"], [0.40, 0.51, 0.44, np.nan, 0.25])
    np.testing.assert_allclose(table["kept_fraction"], [1.0, 0.7, 0.5, np.nan, 0.1])
    grid = threshold_grid(table)
    assert list(grid["mIoU (%)"]) == ["40.00", "51.00", "44.00", "--", "25.00"]
    with pytest.raises(ValueError, match="bin edges"):
        threshold_table(pd.DataFrame(rows), ["1/8"], edges=(0.5, 0.2))


class RecordingEvaluator(optuna.importance.BaseImportanceEvaluator):
    """Records the rebuilt study's distributions; gives every param the same weight."""

    def evaluate(self, study, params=None, *, target=None):
        self.distributions = study.trials[0].distributions
        self.values = [t.value for t in study.trials]
        names = list(self.distributions)
        return {name: 1.0 for name in names}


def test_importance_rebuilds_study_with_log_bounds_from_data():
    rows = [
        trial(
            f"i{k}",
            "1/8",
            "search",
            "search",
            "completed",
            0.4 + 0.01 * k,
            w_pixel=0.5 + k,
            lambda_semantic=10.0 ** -(k + 2),
            lambda_region=10.0 * (k + 1),
        )
        for k in range(3)
    ]
    rows.append(trial("fail", "1/8", "search", "search", "failed", None, w_pixel=99.0))
    evaluator = RecordingEvaluator()
    table = importance_table(pd.DataFrame(rows), ["1/8"], evaluator=evaluator)
    dist = evaluator.distributions
    assert set(dist) == {"w_pixel", "lambda_semantic", "lambda_region"}  # constant ones dropped
    # w_pixel on the log scale the search samples it on (spec.search_space); the threshold is
    # linear.
    assert (dist["w_pixel"].low, dist["w_pixel"].high, dist["w_pixel"].log) == (0.5, 2.5, True)
    assert dist["lambda_semantic"].log and dist["lambda_semantic"].low == pytest.approx(1e-4)
    assert dist["lambda_region"].log and (
        dist["lambda_region"].low,
        dist["lambda_region"].high,
    ) == (10.0, 30.0)
    assert evaluator.values == pytest.approx([0.40, 0.41, 0.42])
    row = table.iloc[0]
    assert row["n_trials"] == 3 and row["note"] == ""
    assert row["w_pixel"] == pytest.approx(1 / 3) and math.isnan(row["w_sup"])
    assert row["evaluator"] == "RecordingEvaluator"


def test_importance_real_evaluator_reproducible_and_not_enough_trials():
    rng = np.random.default_rng(0)
    rows = [
        trial(
            f"r{k}",
            "1/8",
            "search",
            "search",
            "completed",
            float(w),
            w_pixel=float(w),
            confidence_threshold=float(t),
        )
        for k, (w, t) in enumerate(zip(rng.uniform(0.1, 0.9, 30), rng.uniform(0, 1, 30)))
    ]
    rows += [
        trial("one", "1/4", "search", "search", "completed", 0.5),
        trial("c1", "1/2", "search", "search", "completed", 0.5),
        trial("c2", "1/2", "search", "search", "completed", 0.6),
    ]  # identical configs
    first = importance_table(pd.DataFrame(rows), ["1/8", "1/4", "1/2"], seed=3)
    second = importance_table(pd.DataFrame(rows), ["1/8", "1/4", "1/2"], seed=3)
    pd.testing.assert_frame_equal(first, second)
    eighth = first.set_index("protocol").loc["1/8"]
    # the value is w_pixel itself, so it must dominate the unrelated threshold
    assert eighth["w_pixel"] + eighth["confidence_threshold"] == pytest.approx(1.0)
    assert eighth["w_pixel"] > eighth["confidence_threshold"]
    notes = first.set_index("protocol")["note"]
    assert notes["1/4"] == "not enough trials (1 completed)"
    assert notes["1/2"] == "not enough trials (no parameter varies)"
    grid = importance_grid(first)
    assert grid.loc["1/4", "w_P"] == "--" and grid.loc["1/8", "w_sup"] == "--"


def parse_markdown(text: str) -> list[list[str]]:
    rows = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows if "---" not in row]


def test_markdown_and_latex_rendering():
    text, bold = ablation_grid(ablation_table(ablation_frame(), ["1/8", "1/4"]))
    # These rows are not separated (no best mark, see above): set bold by hand to check rendering.
    bold.loc["MGD (paper weights)", "1/8"] = bold.loc["MGD (best found)", "1/4"] = True
    md = parse_markdown(to_markdown(text, bold))
    assert md[0] == ["Method", "1/8", "1/4"]
    assert md[1] == ["Supervised only", "42.00 \u00b1 1.15 (n=3)", "--"]
    assert md[5] == ["MGD (paper weights)", "**52.00 \u00b1 2.00 (n=2)**", "--"]
    assert md[6] == ["MGD (best found)", "--", "**60.00 (n=1)**"]
    tex = to_latex(
        text,
        bold,
        caption="mIoU (%)",
        label="tab:x",
        midrule_before=("Gain of MGD (paper weights) over supervised",),
    )
    for rule in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert rule in tex
    assert r"\textbf{52.00 $\pm$ 2.00 (n=2)}" in tex and r"mIoU (\%)" in tex
    assert r"+ $L_P$ + $L_I$ & -- & -- \\" in tex
    assert tex.count(r"\midrule") == 2  # after the header and before the gain rows


def test_normalize_rejects_unknown_status_and_protocol():
    with pytest.raises(ReportInputError, match="'status'.*done"):
        normalize_trials(pd.DataFrame([trial("a", "1/8", "search", "search", "done", 0.5)]))
    with pytest.raises(ReportInputError, match="'protocol'.*1/3"):
        normalize_trials(pd.DataFrame([trial("a", "1/3", "search", "search", "completed", 0.5)]))


STUDY = {
    "dataset": "synthetic",
    "protocols": ["1/8", "1/4"],
    "student": "deeplabv3plus_resnet18",
    "teacher_deep": "deeplabv3plus_resnet101",
    "teacher_wide": "deeplabv3plus_wide_resnet50_2",
    "num_classes": 6,
    "iterations": 40,
    "created": "2025-01-02T10:00:00",
    "device": "cpu",
}


def write_trial(root, record):
    folder = os.path.join(root, "trials", record["protocol"].replace("/", "_"))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{record['trial_id']}.json"), "w") as f:
        json.dump(record, f)


def record(
    trial_id,
    protocol,
    kind,
    variant,
    status,
    miou,
    seed=0,
    threshold=0.0,
    w_pixel=1.0,
    history=None,
):
    return {
        "trial_id": trial_id,
        "protocol": protocol,
        "kind": kind,
        "variant": variant,
        "seed": seed,
        "status": status,
        "error": "boom" if status == "failed" else None,
        "config": {**CFG, "w_pixel": w_pixel, "confidence_threshold": threshold},
        "miou": miou,
        "best_miou": miou,
        "kept_fraction": 1 - threshold / 2,
        "iteration": 40,
        "max_iterations": 40,
        "history": history or [],
        "device": "cpu",
        "num_devices": 1,
        "wall_s": 36.0,
        "device_hours": 0.01,
        "started_at": f"2025-01-02T10:{trial_id[-1]}0:00",
        "ended_at": None if status == "running" else "2025-01-02T11:00:00",
    }


@pytest.fixture
def results_dir(tmp_path):
    root = str(tmp_path / "results")
    os.makedirs(root)
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump(STUDY, f)
    write_trial(root, record("a1", "1/8", "ablation", "supervised", "completed", 0.30, seed=0))
    write_trial(root, record("a2", "1/8", "ablation", "supervised", "completed", 0.34, seed=1))
    write_trial(root, record("a3", "1/8", "ablation", "mgd_paper", "completed", 0.41, seed=0))
    write_trial(root, record("a4", "1/8", "ablation", "mgd_best", "running", None, seed=0))
    write_trial(
        root,
        record("s1", "1/8", "search", "search", "completed", 0.38, threshold=0.6, w_pixel=0.5),
    )
    write_trial(
        root,
        record("s2", "1/8", "search", "search", "completed", 0.42, threshold=0.95, w_pixel=2.0),
    )
    # miou not written yet: the last history entry is the last evaluation
    write_trial(
        root,
        record(
            "s3",
            "1/8",
            "search",
            "search",
            "early_stopped",
            None,
            threshold=0.2,
            history=[
                {"iteration": 10, "miou": 0.2, "kept_fraction": 0.9, "loss": 1.0},
                {"iteration": 20, "miou": 0.25, "kept_fraction": 0.9, "loss": 0.9},
            ],
        ),
    )
    write_trial(root, record("s4", "1/4", "search", "search", "failed", None))
    with open(os.path.join(root, "trials", "1_8", "half.json"), "w") as f:
        f.write('{"trial_id": "half", "protocol": "1/')
    with open(os.path.join(root, "trials", "1_8", "nokind.json"), "w") as f:
        json.dump({"trial_id": "nokind", "protocol": "1/8", "status": "completed"}, f)
    return root


def test_load_trials_skips_broken_files_with_a_warning(results_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trials = load_trials(results_dir)
    messages = " ".join(str(w.message) for w in caught)
    assert (
        "half.json" in messages
        and "nokind.json" in messages
        and "missing key(s) ['kind']" in messages
    )
    assert sorted(trials["trial_id"]) == ["a1", "a2", "a3", "a4", "s1", "s2", "s3", "s4"]
    s3 = trials.set_index("trial_id").loc["s3"]
    assert s3["miou"] == 0.25 and s3["confidence_threshold"] == 0.2
    assert study_protocols(load_study(results_dir), trials) == ["1/8", "1/4"]
    assert study_protocols({}, trials) == ["1/8", "1/4"]  # canonical order without study.json


def test_load_study_missing_folder_and_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_study(str(tmp_path / "nowhere"))
    with pytest.warns(UserWarning, match="study.json"):
        assert load_study(str(tmp_path)) == {}


def snapshot(root):
    return {
        os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files
    }


def test_cli_writes_every_file_and_only_report_files(results_dir):
    before = snapshot(results_dir)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    for _ in range(2):  # regenerating overwrites the previous report
        done = subprocess.run(
            [sys.executable, "-m", "mgd_ray.report", results_dir],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    added = snapshot(results_dir) - before
    assert all(p == "REPORT.md" or p.startswith("report" + os.sep) for p in added)
    assert not any(p.endswith(".tmp") for p in added)
    names = {"ablation", "search", "threshold", "importance"}
    assert {f"report{os.sep}{n}.{e}" for n in names for e in ("md", "csv", "tex")} <= added
    for png in ("optimization_history", "ablation_bars", "threshold_curve"):
        with open(os.path.join(results_dir, "report", f"{png}.png"), "rb") as f:
            assert f.read(8) == PNG_MAGIC

    with open(os.path.join(results_dir, "report", "ablation.csv")) as f:
        csv = pd.read_csv(io.StringIO(f.read())).set_index(["variant", "protocol"])
    assert csv.loc[("supervised", "1/8"), "mean"] == pytest.approx(0.32)
    assert csv.loc[("supervised", "1/8"), "std"] == pytest.approx(0.04 / math.sqrt(2))
    # one seed of MGD: never separated, however far ahead
    assert csv.loc[("mgd_paper", "1/8"), "n"] == 1 and not csv.loc[("mgd_paper", "1/8"), "best"]
    assert math.isnan(csv.loc[("mgd_best", "1/8"), "mean"])  # running: missing, not zero
    assert csv.loc[("gain", "1/8"), "mean"] == pytest.approx(0.41 - 0.30)  # paired: seed 0 only
    with open(os.path.join(results_dir, "report", "search.tex")) as f:
        tex = f.read()
    assert r"\toprule" in tex and r"\bottomrule" in tex and "42.00" in tex

    with open(os.path.join(results_dir, "REPORT.md")) as f:
        index = f.read()
    for text in (
        "synthetic",
        "1/8, 1/4",
        "deeplabv3plus_resnet18",
        "deeplabv3plus_resnet101",
        "deeplabv3plus_wide_resnet50_2",
        "2025-01-02",
        "still running",
        "| MGD (paper weights) | 41.00 (n=1) | -- |",
        "| Supervised only | 32.00 \u00b1 2.00 (n=2) | -- |",
    ):
        assert text in index
    for link in (
        "report/ablation.csv",
        "report/search.md",
        "report/importance.tex",
        "report/threshold_curve.png",
        "report/optimization_history.png",
    ):
        assert f"({link})" in index and os.path.exists(os.path.join(results_dir, link))
    threshold = pd.read_csv(os.path.join(results_dir, "report", "threshold.csv"))
    eighth = threshold[threshold["protocol"] == "1/8"]
    assert list(eighth["n"]) == [1, 1, 0, 0, 1]  # 0.2 (early-stopped), 0.6, 0.95


def test_generate_report_on_an_empty_study(tmp_path):
    root = str(tmp_path)
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump(STUDY, f)
    paths = generate_report(root)
    with open(paths["ablation_md"]) as f:
        rows = parse_markdown(f.read())
    assert all(c == "--" for row in rows[1:] for c in row[1:])
    assert set(paths) >= {"index", "ablation_bars", "search_csv", "importance_md"}


def test_cli_rejects_a_missing_folder(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mgd_ray.report", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "RESULTS_DIR" in done.stderr and "none" in done.stderr


def test_report_opens_with_what_the_run_was(tmp_path):
    root = str(tmp_path)
    study = {
        **STUDY,
        "budget": {
            "student_iterations": {"1/8": 16, "1/4": 16},
            "teacher_iterations": {"1/8": 8, "1/4": 8},
            "batch_size": 2,
            "crop_size": 48,
            "search_trials": 3,
            "ablation_seeds": 1,
        },
        "background_miou": 0.094,
        "separating_command": "python experiments/tune_loss_weights.py --x 1",
        "separating_note": " on a GPU",
    }
    with open(os.path.join(root, "study.json"), "w") as f:
        json.dump(study, f)
    with open(os.path.join(root, "teachers.json"), "w") as f:
        json.dump(
            {
                "1/8": {
                    "deep": {
                        "arch": "deeplabv3plus_resnet101",
                        "path": "/t/deep.pt",
                        "size_bytes": 238e6,
                        "miou": 0.0976,
                    }
                }
            },
            f,
        )
    for trial_id, variant in (
        ("a1", "supervised"),
        ("a2", "mgd_paper"),
    ):  # equal rows at the background
        write_trial(root, record(trial_id, "1/8", "ablation", variant, "completed", 0.094))
    with open(generate_report(root)["index"]) as f:
        index = f.read()
    opening = index[: index.index("## Study")]
    for text in (
        "## What this run was",
        "synthetic (6 classes)",
        "regime: from scratch",
        "teachers 8 iterations, students 16 iterations, batch 2, crop 48",
        "Seeds per ablation row: 1; search trials per protocol: 3",
        "9.40 mIoU",
        "it cannot rank the loss terms",
        "with one seed per row no row can be told apart from another, and its teachers score "
        "at the all-background level",
        "run `python experiments/tune_loss_weights.py --x 1` on a GPU.",
    ):
        assert text in opening, text
    assert "| Teacher T_D (deep) | 9.76 (n=1) \u2020 | -- |" in index
    assert (
        "| Supervised only | 9.40 (n=1) \u2020 | -- |" in index
        and "**" not in index.split("## Loss-term")[1].split("##")[0]
    )
    assert "`/t/deep.pt`, 238 MB" in index


def test_report_counts_diverged_trials_from_their_records_field(tmp_path):
    root = str(tmp_path)
    write_trial(root, record("s1", "1/8", "search", "search", "completed", 0.4))
    diverged = record("s2", "1/8", "search", "search", "failed", None)
    diverged["diverged"] = {"iteration": 7, "losses": {"loss": "nan", "loss_region": "inf"}}
    write_trial(root, diverged)
    write_trial(
        root, record("s3", "1/8", "search", "search", "failed", None)
    )  # failed, not diverged
    # "diverged at iteration" in an error text is no divergence: only the field counts
    write_trial(
        root,
        {
            **record("s4", "1/8", "search", "search", "failed", None),
            "error": "ValueError: diverged at iteration 3 is only text",
        },
    )
    with pytest.warns(UserWarning, match="study.json"):
        paths = generate_report(root)
    with open(paths["index"]) as f:
        index = f.read()
    assert "- Trials: 4 (1 completed, 3 failed; 1 diverged, at iteration(s) 7)" in index


def test_the_opening_says_whether_mgd_leads_supervised_and_if_not_why():
    """Hand-built rows over paired seeds, one per verdict: each follows the 95% interval of the
    per-seed gain (hand-computed below; t(0.975, 2 dof) = 4.302653)."""
    from mgd_ray.report.opening import mgd_against_supervised

    def table(sup, mgd, teacher, background=False):
        rows = [
            trial(f"{variant}{seed}", "1/8", "ablation", variant, "completed", miou, seed=seed)
            for variant, values in (("supervised", sup), ("mgd_paper", mgd))
            for seed, miou in enumerate(values)
        ]
        return ablation_table(
            pd.DataFrame(rows),
            ["1/8"],
            teachers={"1/8": {"deep": teacher, "wide": teacher - 0.01}},
            background=teacher if background else None,
        )

    # gains 0.03, 0.04, 0.05: mean 0.04, se 0.01 / sqrt(3) = 0.005774, half-width 0.024841
    # -> [0.015159, 0.064841], 6.9 standard errors
    (leads,) = mgd_against_supervised(table([0.40, 0.41, 0.42], [0.43, 0.45, 0.47], 0.60))
    assert "paired gain +4.00 [+1.52, +6.48] (n=3), 6.9 standard errors" in leads
    assert "**MGD is ahead**" in leads and "41.00 \u00b1 0.58 (n=3)" in leads
    (behind,) = mgd_against_supervised(table([0.43, 0.45, 0.47], [0.40, 0.41, 0.42], 0.60))
    assert "-4.00 [-6.48, -1.52]" in behind and "**MGD is behind**" in behind
    # gains 0.03, -0.01, 0.01: mean 0.01, std 0.02, interval [-0.0397, 0.0597] holds zero
    mixed = ([0.40, 0.41, 0.39], [0.43, 0.40, 0.40])
    (budget,) = mgd_against_supervised(table(*mixed, 0.60))
    assert "+1.00 [-3.97, +5.97] (n=3)" in budget and "not separated at this budget" in budget
    (close,) = mgd_against_supervised(table(*mixed, 0.39))  # best teacher 39.00 <= 40.00
    assert "teachers are not above the supervised student (best teacher 39.00)" in close
    (weak,) = mgd_against_supervised(table([0.094], [0.094], 0.095, background=True))
    assert "teachers score at the all-background level" in weak
    (one,) = mgd_against_supervised(table([0.40], [0.45], 0.60))
    assert "+5.00 (n=1)" in one and "one paired seed has no interval" in one
    assert mgd_against_supervised(table([0.40], [math.nan], 0.6)) == []  # nothing to compare yet


RECORD = {
    "command": "python experiments/tune_loss_weights.py --budget showcase",
    "date": "2026-12-06",
    "commit": "abc1234",
    "minutes": 41.6,
    "machine": "2 CPU cores",
    "verdicts": ["1/8: MGD is ahead (hand-written)"],
}


@pytest.mark.parametrize("budget, quoted", [(None, True), ("showcase", False)])
def test_a_synthetic_report_quotes_the_showcase_record_except_the_showcase_itself(
    tmp_path, monkeypatch, budget, quoted
):
    from mgd_ray.report import opening

    record = tmp_path / "showcase.json"
    record.write_text(json.dumps(RECORD))
    monkeypatch.setattr(opening, "SHOWCASE_RECORD", str(record))
    root = tmp_path / "study"
    root.mkdir()
    study = {**STUDY, "budget": {"name": budget, "ablation_seeds": 1}}
    (root / "study.json").write_text(json.dumps(study))
    with open(generate_report(str(root))["index"]) as f:
        opening = f.read().split("## Study")[0]
    said = (
        "**What the showcase found** (a record, not this run's result): `python "
        "experiments/tune_loss_weights.py --budget showcase`, measured on 2026-12-06 at commit "
        "abc1234, 42 minutes on 2 CPU cores:\n- 1/8: MGD is ahead (hand-written)"
    )
    assert (said in opening) == quoted


def test_the_shipped_showcase_record_names_the_readme_command_and_a_measurement():
    from mgd_ray.report.opening import showcase_record

    record = showcase_record()
    assert record is not None, "mgd_ray/presets/showcase.json is missing"
    assert set(record) >= set(RECORD) and record["verdicts"]
    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        assert record["command"] in f.read()
    assert 0 < record["minutes"] <= 60 and len(record["commit"]) >= 7


def test_the_verdict_says_mgd_is_ahead_when_only_its_gain_is_separated():
    from mgd_ray.report.opening import _verdict

    # supervised 0.40, 0.41, 0.42; MGD 0.50, 0.512, 0.524 (gains 0.10, 0.102, 0.104: interval
    # [0.095, 0.109] above zero); + L_P 0.50, 0.511, 0.522 (MGD - L_P = 0, 0.001, 0.002: its
    # interval [-0.0015, 0.0035] holds zero, so no row is best)
    rows = [
        trial(
            f"{variant}{seed}",
            "1/8",
            "ablation",
            variant,
            "completed",
            base + step * seed,
            seed=seed,
        )
        for seed in range(3)
        for variant, base, step in (
            ("supervised", 0.40, 0.01),
            ("mgd_paper", 0.50, 0.012),
            ("pixel", 0.50, 0.011),
        )
    ]
    table = ablation_table(pd.DataFrame(rows), ["1/8"])
    assert not table["best"].any()
    assert _verdict(table, None).startswith("**MGD is ahead of supervised only at this budget**")
    assert "cannot rank" in _verdict(table[table["variant"] != "gain"], None)


def test_a_trial_optuna_was_never_told_of_is_named_in_its_record_and_the_report(tmp_path):
    from mgd_ray.distributed.records import record_untold

    root = str(tmp_path)
    write_trial(root, record("s1", "1/8", "search", "search", "completed", 0.4))
    write_trial(root, record("s2", "1/8", "search", "search", "completed", 0.3))
    record_untold(root, "1/8", "s2", "OperationalError: database is locked")
    record_untold(root, "1/8", "gone", "no record: nothing written")
    with open(os.path.join(root, "trials", "1_8", "s2.json")) as f:
        assert json.load(f)["optuna_error"] == "OperationalError: database is locked"
    assert sorted(os.listdir(os.path.join(root, "trials", "1_8"))) == ["s1.json", "s2.json"]
    with pytest.warns(UserWarning, match="study.json"):
        paths = generate_report(root)
    with open(paths["index"]) as f:
        index = f.read()
    assert "**Optuna was never told how 1 search trial(s) ended** (s2;" in index
