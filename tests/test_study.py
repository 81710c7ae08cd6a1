"""The study's plumbing without a Ray cluster: option checks, the results folder, ablation points,
per-trial records."""
import json
import os
import types

import pytest

from mgd_ray.config import LossWeights
from mgd_ray.distributed.records import TrialRecorder, error_summary
from mgd_ray.distributed.space import ablation_point
from mgd_ray.distributed.study import StudyConfig, open_study_folder
from mgd_ray.distributed.trial import distill_config

import importlib.util

_spec = importlib.util.spec_from_file_location(
    "tune_loss_weights", os.path.join(os.path.dirname(__file__), "..", "experiments", "tune_loss_weights.py"))
tune_loss_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_loss_weights)


def run_cli(argv, capsys):
    code = tune_loss_weights.main(tune_loss_weights.get_args_parser().parse_args(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--protocols", "1/3"], "protocol '1/3'"),
    (["--num-samples", "0"], "--num-samples=0"),
    (["--gpus-per-trial", "3", "--workers-per-trial", "2"], "--gpus-per-trial=3"),
    (["--dataset", "voc"], "--data-root"),
    (["--dataset", "cityscapes", "--data-root", "/no/such/folder"], "/no/such/folder"),
    (["--teacher-deep-checkpoint", "/no/such/teacher.pt"], "/no/such/teacher.pt"),
    (["--ablation-variants", "everything"], "everything"),
])
def test_bad_options_are_refused_before_ray_starts(argv, says, capsys, tmp_path):
    code, err = run_cli(argv + ["--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert says in err
    assert not (tmp_path / "out" / "study.json").exists()


def test_a_finished_study_is_never_overwritten_silently(tmp_path):
    cfg = StudyConfig(output_dir=str(tmp_path))
    open_study_folder(cfg)
    before = (tmp_path / "study.json").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        open_study_folder(cfg)
    with pytest.raises(ValueError, match="num_samples"):
        open_study_folder(StudyConfig(output_dir=str(tmp_path), resume=True, num_samples=99))
    assert open_study_folder(StudyConfig(output_dir=str(tmp_path), resume=True))["dataset"] == "synthetic"
    assert (tmp_path / "study.json").read_text() == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        open_study_folder(StudyConfig(output_dir=str(tmp_path / "new"), resume=True))


def test_ablation_points_switch_terms_on_one_by_one():
    paper = LossWeights(sup=1.0, pixel=1.0, semantic=0.002, region=100.0)
    row = {v: ablation_point(v, paper, None) for v in ("supervised", "pixel", "pixel_semantic", "pixel_region",
                                                        "mgd_paper")}
    as_tuple = {v: (p["w_sup"], p["w_pixel"], p["lambda_semantic"], p["lambda_region"]) for v, p in row.items()}
    assert as_tuple == {"supervised": (1, 0, 0, 0), "pixel": (1, 1, 0, 0), "pixel_semantic": (1, 1, 0.002, 0),
                        "pixel_region": (1, 1, 0, 100), "mgd_paper": (1, 1, 0.002, 100)}
    assert all(p["confidence_threshold"] == 0.0 for p in row.values())
    best = {"w_sup": 1.0, "w_pixel": 2.0, "lambda_semantic": 0.01, "lambda_region": 5.0, "confidence_threshold": 0.7}
    assert ablation_point("mgd_best", paper, best) == best
    with pytest.raises(ValueError, match="finished search"):
        ablation_point("mgd_best", paper, None)


def test_trial_config_becomes_the_distill_config_of_its_point():
    base = {"distill": {"seed": 0, "iterations": 10}}
    search = distill_config({"run": base, "w_pixel": 2.0, "lambda_semantic": 0.01, "lambda_region": 50.0,
                             "confidence_threshold": 0.5})
    assert search["weights"] == {"sup": 1.0, "pixel": 2.0, "semantic": 0.01, "region": 50.0}
    assert search["confidence_threshold"] == 0.5 and search["seed"] == 0 and search["iterations"] == 10
    ablation = distill_config({"run": base, "ablation": {"variant": "supervised", "seed": 3, "w_sup": 1.0,
                                                          "w_pixel": 0.0, "lambda_semantic": 0.0,
                                                          "lambda_region": 0.0, "confidence_threshold": 0.0}})
    assert ablation["weights"] == {"sup": 1.0, "pixel": 0.0, "semantic": 0.0, "region": 0.0}
    assert ablation["seed"] == 3
    assert base["distill"] == {"seed": 0, "iterations": 10}  # the shared base is not mutated


def fake_trial(trial_id, error_file=None):
    config = {"run": {"distill": {"seed": 0}}, "w_pixel": 1.0, "lambda_semantic": 0.002, "lambda_region": 100.0,
              "confidence_threshold": 0.3}
    return types.SimpleNamespace(trial_id=trial_id, config=config, error_file=error_file)


def read_record(tmp_path, trial_id):
    with open(tmp_path / "trials" / "1_8" / f"{trial_id}.json") as f:
        return json.load(f)


def test_records_follow_a_trial_through_results_early_stop_and_failure(tmp_path):
    recorder = TrialRecorder(str(tmp_path), "1/8", "search", max_iterations=100, device="cpu", num_devices=2,
                             verbose=False)
    done, stopped, failed = fake_trial("a"), fake_trial("b"), fake_trial("c", str(tmp_path / "error.txt"))
    for trial in (done, stopped, failed):
        recorder.on_trial_start(0, [], trial)
    assert read_record(tmp_path, "a")["status"] == "running"
    for it, miou in ((50, 0.1), (50, 0.4), (100, 0.35)):  # 50 again: resumed from its checkpoint
        recorder.on_trial_result(0, [], done, {"iteration": it, "miou": miou, "kept_fraction": 0.8, "loss": 1.0})
    recorder.on_trial_result(0, [], stopped, {"iteration": 50, "miou": 0.2, "kept_fraction": 0.9, "loss": 2.0})
    recorder.on_trial_result(0, [], failed, {"iteration": 10, "miou": 0.1, "kept_fraction": 1.0, "loss": 9.0})
    recorder.on_trial_complete(0, [], done)
    recorder.on_trial_complete(0, [], stopped)
    (tmp_path / "error.txt").write_text("Traceback ...\n  File x\nray.train.TrainingFailedError: worker 0\n"
                                        "DivergedError: diverged at iteration 3: loss=nan (region=inf)\n")
    recorder.on_trial_error(0, [], failed)

    a = read_record(tmp_path, "a")
    assert (a["status"], a["miou"], a["best_miou"], a["iteration"]) == ("completed", 0.35, 0.4, 100)
    assert [h["iteration"] for h in a["history"]] == [50, 100]
    assert a["config"] == {"w_sup": 1.0, "w_pixel": 1.0, "lambda_semantic": 0.002, "lambda_region": 100.0,
                           "confidence_threshold": 0.3}
    assert a["device_hours"] == pytest.approx(a["wall_s"] * 2 / 3600)
    assert read_record(tmp_path, "b")["status"] == "early_stopped"
    c = read_record(tmp_path, "c")
    assert c["status"] == "failed" and [h["iteration"] for h in c["history"]] == [10]
    assert c["error"] == "diverged at iteration 3: loss=nan (region=inf)"


def test_error_summary_without_divergence_takes_the_last_error_line():
    text = "Traceback\nValueError: inner\nThe above exception...\nRuntimeError: outer problem\n  detail\n"
    assert error_summary(text) == "RuntimeError: outer problem"
