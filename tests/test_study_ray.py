"""End-to-end studies on a local Ray cluster (CPU) without the dashboard and beside a second Ray
instance: DDP over gloo with two Train workers per trial, a diverging trial recorded as failed
while the others finish, and a driver killed mid-study then resumed. One `ray.init` is shared by
the module; each Tune trial costs ~20 s of Ray start-up here. There Ray Train's own placement-group
cleaner cannot work: the study gives its trials' reservations back itself (each 2-worker trial
takes both CPUs, so a single leak would stall the next one)."""

import glob
import json
import os
import re
import signal
import subprocess

import optuna
import pandas as pd
import pytest
import ray
import torch

from mgd_ray.distributed.options import SMOKE
from mgd_ray.distributed.search import RECORD_TO_OPTUNA_STATE, TRIAL_ID_ATTR
from mgd_ray.distributed.study import StudyConfig, run_study
from mgd_ray.models import build_model
from tests.study_helpers import (
    CLI,
    Head,
    cluster_is_idle,
    random_teacher_files,
    records,
    start_driver,
    wait_for,
)

pytestmark = pytest.mark.ray
# --smoke's study (one protocol, two search trials, one seed), smaller still, and quiet.
TINY = dict(SMOKE, iterations=4, teacher_iterations=2, eval_every=2, crop_size=32, verbose=False)


@pytest.fixture(scope="module")
def cluster():
    """The study's own local instance, without the dashboard, beside a second instance on the
    machine (a `ray start` head of 1 CPU): the setups in which Ray Train's own placement-group
    cleaner fails (it needs the state API, and scans the machine for its cluster)."""
    other = Head(num_cpus=1)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        other.stop()


def test_ddp_study_records_a_diverging_trial_and_finishes_the_rest(cluster, tmp_path):
    cluster_is_idle()
    teachers = random_teacher_files(tmp_path)
    out = tmp_path / "study"
    cfg = StudyConfig.from_options(
        output_dir=str(out),
        workers_per_trial=2,
        max_concurrent_trials=1,
        ablation_variants=("supervised", "mgd_best"),
        teacher_deep_checkpoint=teachers["deep"],
        teacher_wide_checkpoint=teachers["wide"],
        **TINY,
    )
    # The second search point's enormous weights overflow the loss at once: it must diverge.
    diverging = {
        "w_pixel": 1.0,
        "lambda_semantic": 1e38,
        "lambda_region": 1e38,
        "confidence_threshold": 0.0,
    }
    paths = run_study(cfg, extra_points=[diverging])

    by_kind = {}
    for record in records(out):
        by_kind.setdefault((record["kind"], record["variant"]), []).append(record)
    search = by_kind[("search", "search")]
    assert sorted(r["status"] for r in search) == ["completed", "failed"]
    failed = next(r for r in search if r["status"] == "failed")
    assert failed["config"]["lambda_region"] == 1e38
    assert re.match(r"diverged at iteration \d+: loss=(nan|inf)", failed["error"]), failed["error"]
    # The same divergence as data: where it happened and the losses of that iteration.
    assert failed["error"].startswith(
        f"diverged at iteration {failed['diverged']['iteration']}: "
        f"loss={failed['diverged']['losses']['loss']}"
    )
    assert failed["diverged"]["losses"]["loss"] in ("nan", "inf")
    assert all(r["diverged"] is None for r in search if r["status"] != "failed")
    for record in search + by_kind[("ablation", "supervised")] + by_kind[("ablation", "mgd_best")]:
        if record["status"] == "failed":
            continue
        assert record["status"] == "completed"
        assert record["world_size"] == 2  # both Train workers took part (DDP over gloo)
        assert [h["iteration"] for h in record["history"]] == [2, 4]
        assert 0.0 <= record["miou"] <= 1.0
    best = next(r for r in search if r["status"] == "completed")
    assert (
        by_kind[("ablation", "mgd_best")][0]["config"] == best["config"]
    )  # the best search point

    study = optuna.load_study(study_name="mgd-1_8", storage=f"sqlite:///{out / 'optuna.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE", "FAIL"]
    # One Optuna trial per trial record, each in the state its record says it ended in.
    assert {t.user_attrs[TRIAL_ID_ATTR]: t.state for t in study.trials} == {
        r["trial_id"]: RECORD_TO_OPTUNA_STATE[r["status"]] for r in search
    }
    assert study.best_value == pytest.approx(best["miou"])

    # The report of this real study: measured cells filled, rows not run shown as missing.
    ablation = pd.read_csv(paths["ablation_csv"])
    assert os.path.exists(paths["index"]) and os.path.getsize(paths["optimization_history"]) > 0
    text = ablation.to_string()
    assert "Supervised only" in text and "MGD (best found)" in text
    supervised = by_kind[("ablation", "supervised")][0]["miou"]
    assert any(
        abs(v - supervised) < 1e-9
        for v in pd.to_numeric(ablation.stack(), errors="coerce").dropna()
    )


def best_student_miou(out, protocol_slug="1_8"):
    """(recorded mIoU, mIoU of models/<slug>/best_student.pt evaluated here on the val set)."""
    from torch.utils.data import DataLoader

    from mgd_ray.config import DataConfig
    from mgd_ray.data import build_datasets
    from mgd_ray.engine.evaluate import evaluate

    with open(out / "models" / protocol_slug / "best_student.json") as f:
        info = json.load(f)
    with open(out / "study.json") as f:
        crop = json.load(f)["budget"]["crop_size"]
    model = build_model(info["arch"], info["num_classes"])
    model.load_state_dict(torch.load(out / "models" / protocol_slug / "best_student.pt"))
    val = build_datasets(
        DataConfig(
            dataset="synthetic",
            protocol=info["protocol"],
            crop_size=crop,
            split_out_dir=str(out / "splits"),
        )
    ).val
    scored = evaluate(
        model, DataLoader(val, batch_size=1), info["num_classes"], crop, torch.device("cpu")
    )
    return info["miou"], scored["miou"]


def results_bytes(out, exclude):
    total = 0
    for folder, _, files in os.walk(out):
        if not os.path.abspath(folder).startswith(os.path.abspath(exclude)):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    return total


def test_killed_driver_resumes_without_rerunning_finished_trials(cluster, tmp_path):
    cluster_is_idle()
    out = tmp_path / "study"
    argv = CLI + [
        "--smoke",
        # --smoke's teachers (trained here, cached for the resumed driver) evaluated once, not
        # twice: evaluating both CPS branches on the val set is most of a teacher run's time
        "--teacher-iterations",
        "4",
        "--num-samples",
        "2",
        "--ablation-variants",
        "supervised",
        "mgd_paper",
        "mgd_best",
        "--max-concurrent-trials",
        "1",
        "--address",
        cluster,
        "--output-dir",
        str(out),
        "--quiet",
        "--mlflow-uri",
        f"file:{tmp_path / 'mlruns'}",
    ]
    log = tmp_path / "driver.log"
    driver = start_driver(argv, log)
    try:
        # killed once an ablation trial has finished: after the search's best was exported and its
        # finished trials' weights were pruned, the riskiest point for --resume. The bound only
        # catches a study that never gets there (about 3 minutes on 2 cores; allow a slower
        # machine).
        wait_for(
            lambda: any(
                r["status"] == "completed" and r["kind"] == "ablation" for r in records(out)
            ),
            1200,
            "an ablation trial to complete",
            driver,
            log,
            step=2,
        )
    finally:
        os.killpg(
            driver.pid, signal.SIGKILL
        )  # the driver dies mid-study, with no chance to clean up
        driver.wait()
    finished = {r["trial_id"]: r for r in records(out) if r["status"] == "completed"}
    assert finished, (tmp_path / "driver.log").read_text()[-3000:]
    assert len(glob.glob(str(out / "ray" / "teachers" / "*.pt"))) == 2
    assert (
        glob.glob(str(out / "ray" / "*" / "teacher-*")) == []
    )  # training state dropped once cached
    assert (
        out / "models" / "1_8" / "best_student.pt"
    ).exists()  # exported before the search was pruned
    search_ids = [r["trial_id"] for r in records(out) if r["kind"] == "search"]
    assert not any(os.path.exists(out / "ray" / "study" / f"train-{t}") for t in search_ids)

    resumed = subprocess.run(argv + ["--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "cached" in resumed.stdout  # the teachers were not trained again
    assert "== study: ablation, protocol 1/8 (1 of 1)" in resumed.stdout  # the progress line
    assert (
        "Checkpoint successfully created" not in resumed.stdout + resumed.stderr
    )  # Train INFO: log files only
    after = {r["trial_id"]: r for r in records(out)}
    assert len(after) == 2 + 3
    assert all(r["status"] in ("completed", "early_stopped") for r in after.values())
    for trial_id, record in finished.items():  # finished trials were kept as they were, not re-run
        assert after[trial_id]["history"] == record["history"]
        assert after[trial_id]["ended_at"] == record["ended_at"]
    assert (out / "REPORT.md").exists()
    assert (
        glob.glob(str(out / "ray" / "*" / "train-*")) == []
    )  # no finished trial keeps its weights
    # The console (both driver sessions) shows none of Ray Train's PreemptionWatcher notices, nor
    # Tune's experiment header.
    console_text = log.read_text() + resumed.stdout + resumed.stderr
    assert "PreemptionWatcher" not in console_text
    assert "Configuration for experiment" not in console_text
    assert "Wrote the latest version of all result files" not in console_text  # Ray's logger
    assert (
        "known-harmless line(s) of Ray, Tune and Optuna hidden" in resumed.stdout + resumed.stderr
    )
    check_mlflow_store(f"file:{tmp_path / 'mlruns'}", out, list(after.values()))

    # The best student is a plain state dict that scores its recorded mIoU, and it is the best one.
    recorded, scored = best_student_miou(out)
    assert scored == pytest.approx(recorded, abs=1e-3)
    assert recorded == max(r["miou"] for r in after.values() if r["status"] == "completed")
    teachers = json.loads((out / "teachers.json").read_text())["1/8"]
    assert set(teachers) == {"deep", "wide"} and all(
        0 <= t["miou"] <= 1 for t in teachers.values()
    )
    report = (out / "REPORT.md").read_text()
    assert report.index("## What this run was") < report.index("## Loss-term ablation")
    assert "Teacher T_D (deep)" in report and "best_student.pt" in report
    # The smoke study's size budget: 700 MB in all (the two fp32 teachers are ~570 MB of it).
    total = results_bytes(out, exclude=tmp_path / "none")
    assert total <= 700e6, total
    assert results_bytes(out, exclude=out / "ray" / "teachers") <= 130e6
    # Plain re-runs never overwrite a study.
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--resume" in again.stderr


def check_mlflow_store(uri, out, records):
    """The study's MLflow experiment against its trial records: one run per trial (a trial that
    the killed driver left running is continued on --resume, not opened twice), its point, seed
    and variant as params, its mIoU history, final mIoU and status; the report on the parent."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mgd-study")
    runs = client.search_runs([experiment.experiment_id], "tags.role = 'trial'")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(r["trial_id"] for r in records)
    [parent] = client.search_runs([experiment.experiment_id], "tags.role = 'study'")
    assert parent.info.status == "FINISHED"
    assert {"REPORT.md", "report", "study.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    by_id = {r["trial_id"]: r for r in records}
    for run in runs:
        record = by_id[run.data.tags["trial_id"]]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["status"] == record["status"]
        assert run.info.status == ("FAILED" if record["status"] == "failed" else "FINISHED")
        params = run.data.params
        assert (params["protocol"], params["kind"], params["variant"], int(params["seed"])) == (
            record["protocol"],
            record["kind"],
            record["variant"],
            record["seed"],
        )
        assert {k: float(params[k]) for k in record["config"]} == record["config"]
        history = client.get_metric_history(run.info.run_id, "miou")
        assert sorted((m.step, m.value) for m in history) == [
            (h["iteration"], h["miou"]) for h in record["history"]
        ]
        assert run.data.metrics["final_miou"] == pytest.approx(record["miou"])
