"""The study's plumbing without a Ray cluster: option checks, the results folder, ablation points,
per-trial records."""

import json
import math
import os
import types

import numpy as np
import pytest
from ray import cloudpickle

from mgd_ray.config import LossWeights
from mgd_ray.distributed.records import TrialRecorder, error_summary
from mgd_ray.distributed.spec import SearchPoint, ablation_point, from_tune
from mgd_ray.distributed.study import open_study_folder
from mgd_ray.distributed.study_config import StudyConfig
from mgd_ray.engine import DivergedError
from tests.study_helpers import run_cli, search_config, trial_spec, tune_loss_weights


@pytest.mark.parametrize(
    "argv, says",
    [
        (["--protocols", "1/3"], "protocol '1/3'"),
        (["--num-samples", "0"], "--num-samples=0"),
        (["--gpus-per-trial", "3", "--workers-per-trial", "2"], "--gpus-per-trial=3"),
        (["--dataset", "voc"], "--data-root"),
        (["--dataset", "cityscapes", "--data-root", "/no/such/folder"], "/no/such/folder"),
        (["--teacher-deep-checkpoint", "/no/such/teacher.pt"], "/no/such/teacher.pt"),
        (["--ablation-variants", "everything"], "everything"),
        (["--worker-start-timeout", "0"], "--worker-start-timeout=0"),
        (["--loader-workers", "-1"], "--loader-workers=-1"),
    ],
)
def test_bad_options_are_refused_before_ray_starts(argv, says, capsys, tmp_path):
    code, err = run_cli(argv + ["--output-dir", str(tmp_path / "out")], capsys)
    assert code == 2
    assert says in err
    assert not (tmp_path / "out" / "study.json").exists()


def test_a_finished_study_is_never_overwritten_silently(tmp_path):
    cfg = StudyConfig.from_options(output_dir=str(tmp_path))
    open_study_folder(cfg)
    before = (tmp_path / "study.json").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        open_study_folder(cfg)
    with pytest.raises(ValueError, match="num_samples"):
        open_study_folder(
            StudyConfig.from_options(output_dir=str(tmp_path), resume=True, num_samples=99)
        )
    assert (
        open_study_folder(StudyConfig.from_options(output_dir=str(tmp_path), resume=True))[
            "dataset"
        ]
        == "synthetic"
    )
    assert (tmp_path / "study.json").read_text() == before
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        open_study_folder(StudyConfig.from_options(output_dir=str(tmp_path / "new"), resume=True))


def test_ablation_points_switch_terms_on_one_by_one():
    paper = SearchPoint(LossWeights(sup=1.0, pixel=1.0, semantic=0.002, region=100.0))
    row = {
        v: ablation_point(v, paper, None).to_tune()
        for v in ("supervised", "pixel", "pixel_semantic", "pixel_region", "mgd_paper")
    }
    as_tuple = {
        v: (p["w_sup"], p["w_pixel"], p["lambda_semantic"], p["lambda_region"])
        for v, p in row.items()
    }
    assert as_tuple == {
        "supervised": (1, 0, 0, 0),
        "pixel": (1, 1, 0, 0),
        "pixel_semantic": (1, 1, 0.002, 0),
        "pixel_region": (1, 1, 0, 100),
        "mgd_paper": (1, 1, 0.002, 100),
    }
    assert all(p["confidence_threshold"] == 0.0 for p in row.values())
    best = SearchPoint.from_tune(
        {
            "w_sup": 1.0,
            "w_pixel": 2.0,
            "lambda_semantic": 0.01,
            "lambda_region": 5.0,
            "confidence_threshold": 0.7,
        }
    )
    assert ablation_point("mgd_best", paper, best) == best
    with pytest.raises(ValueError, match="finished search"):
        ablation_point("mgd_best", paper, None)


def test_trial_config_becomes_the_distill_config_of_its_point():
    spec = trial_spec(seed=0, iterations=10)
    base = spec.to_tune()
    search = from_tune(
        {
            "run": base,
            "w_pixel": 2.0,
            "lambda_semantic": 0.01,
            "lambda_region": 50.0,
            "confidence_threshold": 0.5,
        }
    ).distill.to_dict()
    assert search["weights"] == {"sup": 1.0, "pixel": 2.0, "semantic": 0.01, "region": 50.0}
    assert (
        search["confidence_threshold"] == 0.5
        and search["seed"] == 0
        and search["iterations"] == 10
    )
    ablation = from_tune(
        {
            "run": base,
            "ablation": {
                "variant": "supervised",
                "seed": 3,
                "w_sup": 1.0,
                "w_pixel": 0.0,
                "lambda_semantic": 0.0,
                "lambda_region": 0.0,
                "confidence_threshold": 0.0,
            },
        }
    )
    assert ablation.distill.to_dict()["weights"] == {
        "sup": 1.0,
        "pixel": 0.0,
        "semantic": 0.0,
        "region": 0.0,
    }
    assert ablation.distill.to_dict()["seed"] == 3
    assert base == spec.to_tune()  # the shared base is not mutated
    assert ablation.spec == spec  # the spec comes back whole from Tune's plain dict


def test_a_search_point_checks_its_weights_and_threshold_once_made():
    with pytest.raises(ValueError, match="confidence_threshold=1.5"):
        SearchPoint.from_tune(
            {
                "w_pixel": 1.0,
                "lambda_semantic": 0.0,
                "lambda_region": 0.0,
                "confidence_threshold": 1.5,
            }
        )
    with pytest.raises(ValueError, match="weights.region"):
        SearchPoint.from_tune(
            {
                "w_pixel": 1.0,
                "lambda_semantic": 0.0,
                "lambda_region": -1.0,
                "confidence_threshold": 0.0,
            }
        )
    point = SearchPoint(LossWeights(sup=1.0, pixel=2.0, semantic=0.5, region=3.0), 0.25)
    assert point.to_tune() == {
        "w_sup": 1.0,
        "w_pixel": 2.0,
        "lambda_semantic": 0.5,
        "lambda_region": 3.0,
        "confidence_threshold": 0.25,
    }
    assert point.searched() == {
        "w_pixel": 2.0,
        "lambda_semantic": 0.5,
        "lambda_region": 3.0,
        "confidence_threshold": 0.25,
    }  # the keys Optuna's space suggests
    assert SearchPoint.from_tune(point.searched()) == point  # w_sup, not searched, is 1


def fake_trial(trial_id, error_file=None, pickled_error_file=None):
    config = search_config(
        {
            "w_pixel": 1.0,
            "lambda_semantic": 0.002,
            "lambda_region": 100.0,
            "confidence_threshold": 0.3,
        },
        seed=0,
    )
    return types.SimpleNamespace(
        trial_id=trial_id,
        config=config,
        error_file=error_file,
        pickled_error_file=pickled_error_file,
    )


def read_record(tmp_path, trial_id):
    with open(tmp_path / "trials" / "1_8" / f"{trial_id}.json") as f:
        return json.load(f)


def search_recorder(tmp_path, max_iterations, num_devices):
    """A quiet TrialRecorder of protocol 1/8's search, on CPU, writing to `tmp_path`."""
    return TrialRecorder(
        str(tmp_path),
        "1/8",
        "search",
        max_iterations=max_iterations,
        device="cpu",
        num_devices=num_devices,
        verbose=False,
    )


def test_records_follow_a_trial_through_results_early_stop_and_failure(tmp_path):
    recorder = search_recorder(tmp_path, max_iterations=100, num_devices=2)
    done, stopped = fake_trial("a"), fake_trial("b")
    failed = fake_trial("c", str(tmp_path / "error.txt"), str(tmp_path / "error.pkl"))
    for trial in (done, stopped, failed):
        recorder.on_trial_start(0, [], trial)
    assert read_record(tmp_path, "a")["status"] == "running"
    for it, miou in ((50, 0.1), (50, 0.4), (100, 0.35)):  # 50 again: resumed from its checkpoint
        recorder.on_trial_result(
            0, [], done, {"iteration": it, "miou": miou, "kept_fraction": 0.8, "loss": 1.0}
        )
    recorder.on_trial_result(
        0, [], stopped, {"iteration": 50, "miou": 0.2, "kept_fraction": 0.9, "loss": 2.0}
    )
    recorder.on_trial_result(
        0, [], failed, {"iteration": 10, "miou": 0.1, "kept_fraction": 1.0, "loss": 9.0}
    )
    recorder.on_trial_complete(0, [], done)
    recorder.on_trial_complete(0, [], stopped)
    (tmp_path / "error.txt").write_text(
        "Traceback ...\n  File x\nray.train.TrainingFailedError: worker 0\n"
        "DivergedError: diverged at iteration 3: loss=nan (region=inf)\n"
    )
    # What Tune keeps beside the text: the exception, wrapped by Ray, pickled with its fields.
    wrapped = RuntimeError("ray::ImplicitFunc.train()")
    wrapped.cause = DivergedError(3, {"loss": math.nan, "region": math.inf})
    (tmp_path / "error.pkl").write_bytes(cloudpickle.dumps(wrapped))
    recorder.on_trial_error(0, [], failed)

    a = read_record(tmp_path, "a")
    assert (a["status"], a["miou"], a["best_miou"], a["iteration"]) == (
        "completed",
        0.35,
        0.4,
        100,
    )
    assert [h["iteration"] for h in a["history"]] == [50, 100]
    assert a["config"] == {
        "w_sup": 1.0,
        "w_pixel": 1.0,
        "lambda_semantic": 0.002,
        "lambda_region": 100.0,
        "confidence_threshold": 0.3,
    }
    assert a["device_hours"] == pytest.approx(a["wall_s"] * 2 / 3600)
    assert read_record(tmp_path, "b")["status"] == "early_stopped"
    c = read_record(tmp_path, "c")
    assert c["status"] == "failed" and [h["iteration"] for h in c["history"]] == [10]
    assert c["error"] == "diverged at iteration 3: loss=nan (region=inf)"
    assert c["diverged"] == {"iteration": 3, "losses": {"loss": "nan", "region": "inf"}}
    assert a["diverged"] is None and read_record(tmp_path, "b")["diverged"] is None


def test_a_failure_that_is_no_divergence_keeps_its_error_line_and_no_diverged_field(tmp_path):
    recorder = search_recorder(tmp_path, max_iterations=100, num_devices=1)
    trial = fake_trial("e", str(tmp_path / "error.txt"), str(tmp_path / "error.pkl"))
    recorder.on_trial_start(0, [], trial)
    (tmp_path / "error.txt").write_text(
        "Traceback\nValueError: diverged at iteration 3 is only text here\n"
    )
    (tmp_path / "error.pkl").write_bytes(
        cloudpickle.dumps(ValueError("diverged at iteration 3 is only text here"))
    )
    recorder.on_trial_error(0, [], trial)
    e = read_record(tmp_path, "e")
    assert (
        e["error"] == "ValueError: diverged at iteration 3 is only text here"
        and e["diverged"] is None
    )


def test_records_count_restarts_of_the_worker_group_and_list_its_nodes(tmp_path):
    recorder = search_recorder(tmp_path, max_iterations=12, num_devices=1)
    trial = fake_trial("a")
    recorder.on_trial_start(0, [], trial)
    # Two reports from the first start on node n1, then the run restarted on n2 from the checkpoint
    # at 8.
    for it, start, node in ((4, "s1", "n1"), (8, "s1", "n1"), (12, "s2", "n2")):
        recorder.on_trial_result(
            0,
            [],
            trial,
            {
                "iteration": it,
                "miou": 0.1,
                "kept_fraction": 1.0,
                "loss": 1.0,
                "run_start": start,
                "node_id": node,
            },
        )
        if it == 8:
            assert read_record(tmp_path, "a")["restarts"] == 0
    recorder.on_trial_complete(0, [], trial)
    a = read_record(tmp_path, "a")
    assert (a["restarts"], a["nodes"], a["status"]) == (1, ["n1", "n2"], "completed")
    assert [h["iteration"] for h in a["history"]] == [4, 8, 12]


@pytest.mark.parametrize(
    "text, summary",
    [
        # without a divergence: the last error line
        (
            "Traceback\nValueError: inner\nThe above exception...\n"
            "RuntimeError: outer problem\n  detail\n",
            "RuntimeError: outer problem",
        ),
        # a Ray wrapper whose line ends in ":" gives the cause on the next line: kept with it
        (
            "Failure # 1\nray::ImplicitFunc.train()\n"
            "ray.train.ControllerError: Training failed due to controller error:\n"
            "The worker group startup timed out after 3.0 seconds waiting for 2 workers.\n",
            "ray.train.ControllerError: Training failed due to controller error: "
            "The worker group startup timed out after 3.0 seconds waiting for 2 workers.",
        ),
    ],
)
def test_error_summary_is_the_last_error_line_with_the_cause_a_wrapper_gives(text, summary):
    assert error_summary(text) == summary


def test_every_command_line_option_lands_in_one_part_of_the_config_and_comes_back_out():
    from mgd_ray.cli import get_args_parser
    from mgd_ray.distributed.study_config import OPTIONS

    dests = {a.dest for a in get_args_parser()._actions if a.option_strings} - {"help", "smoke"}
    assert dests == set(OPTIONS)  # every flag is one option of the config, and no option lacks one
    given = {
        "dataset": "voc",
        "data_root": "/data/voc",
        "budget": "showcase",
        "protocols": ("1/16",),
        "gpus_per_trial": 2,
        "workers_per_trial": 2,
        "output_dir": "/tmp/x",
        "teacher_deep_checkpoint": "/t/deep.pt",
        "teacher_targets": "live",
        "seed": 3,
    }
    cfg = StudyConfig.from_options(**given)
    assert (cfg.data.dataset, cfg.data.data_root, cfg.budget.name, cfg.budget.protocols) == (
        "voc",
        "/data/voc",
        "showcase",
        ("1/16",),
    )
    assert (cfg.cluster.gpus_per_worker, cfg.storage.output_dir, cfg.seed) == (1, "/tmp/x", 3)
    assert (cfg.teachers.deep_checkpoint, cfg.teachers.targets) == ("/t/deep.pt", "live")
    assert cfg.options() == {**StudyConfig().options(), **given}
    with pytest.raises(TypeError, match="num_sample"):
        StudyConfig.from_options(num_sample=3)
    with pytest.raises(ValueError, match="--teacher-targets 'cached'"):  # a renamed field's option
        StudyConfig.from_options(teacher_targets="cached")


def test_every_default_is_resolved_once_and_explicit_options_win():
    from mgd_ray.distributed.options import SMOKE, gpu_budget, resolve_study, study_budget

    budget = gpu_budget("synthetic")
    assert (
        budget["iterations"] > 16 and budget["teacher_iterations"] > 8
    )  # bigger than the CPU first run
    assert budget["trials_per_gpu"] > 1  # tiny synthetic runs leave a GPU mostly idle
    # No GPU: the CPU, the preset's study size, the synthetic set's regime and folder.
    cfg, said = resolve_study(gpus=lambda address: 0)
    assert (
        cfg.cluster.gpus_per_trial,
        cfg.budget.iterations,
        cfg.data.pretrained,
        cfg.storage.output_dir,
    ) == (
        0,
        None,
        "none",
        "results/synthetic",
    )
    assert (cfg.budget.num_samples, cfg.budget.seeds) == tuple(
        study_budget("synthetic").values()
    ) and "CPU" in said
    # 4 GPUs found, nothing given: one GPU per trial and the GPU budget; a given option stays.
    cfg, said = resolve_study(gpus=lambda address: 4, seeds=5)
    assert (cfg.cluster.gpus_per_trial, cfg.budget.iterations, cfg.budget.teacher_iterations) == (
        1,
        budget["iterations"],
        budget["teacher_iterations"],
    )
    assert (
        cfg.budget.seeds == 5
        and cfg.cluster.trials_per_gpu == budget["trials_per_gpu"]
        and "4 GPU(s)" in said
    )
    # --gpus-per-trial given (even 0 on a GPU machine): used as given, no GPU budget, nothing
    # detected.
    for given in (0, 2):
        cfg, _ = resolve_study(
            gpus=lambda address: pytest.fail("detected"), gpus_per_trial=given, workers_per_trial=1
        )
        assert cfg.cluster.gpus_per_trial == given and cfg.budget.iterations is None
    # --smoke's values unless given; VOC defaults to the paper's regime.
    cfg, _ = resolve_study(smoke=True, gpus=lambda address: 4, iterations=3)
    assert (cfg.budget.iterations, cfg.budget.num_samples, cfg.cluster.gpus_per_trial) == (
        3,
        SMOKE["num_samples"],
        1,
    )
    assert cfg.storage.output_dir == "results/smoke" and cfg.budget.crop_size == SMOKE["crop_size"]
    cfg, _ = resolve_study(gpus=lambda address: 0, dataset="voc", data_root=".")
    assert (cfg.data.pretrained, cfg.budget.num_samples) == ("imagenet", 16)


def test_a_named_budget_comes_from_the_preset_and_explicit_options_still_win():
    import yaml

    from mgd_ray.distributed.options import resolve_study
    from mgd_ray.engine.presets import PRESET_DIR

    with open(PRESET_DIR / "synthetic.yaml") as f:
        raw = yaml.safe_load(f)["showcase_budget"]
    cfg, said = resolve_study(budget="showcase", gpus=lambda address: 4, seeds=5)
    assert cfg.budget.protocols == tuple(raw["protocols"]) and cfg.budget.name == "showcase"
    assert (
        cfg.budget.iterations,
        cfg.budget.teacher_iterations,
        cfg.budget.eval_every,
        cfg.budget.num_samples,
    ) == (
        raw["student_iterations"],
        raw["teacher_iterations"],
        raw["eval_every"],
        raw["search_trials"],
    )
    assert cfg.budget.teacher_eval_every == raw["teacher_eval_every"]
    assert cfg.budget.seeds == 5 and cfg.storage.output_dir == "results/synthetic-showcase"
    # a GPU found: the trials use it, but the GPU budget does not replace the named one
    assert (
        cfg.cluster.gpus_per_trial == 1
        and cfg.cluster.trials_per_gpu == 1
        and "applied: none" in said
    )
    with pytest.raises(ValueError, match="--budget huge: preset synthetic.yaml has no "):
        resolve_study(budget="huge", gpus=lambda address: 0)
    with pytest.raises(ValueError, match="--smoke and --budget showcase"):
        resolve_study(smoke=True, budget="showcase", gpus=lambda address: 0)


def test_ablation_seeds_are_never_the_searchs_and_tpe_leaves_its_start_up():
    from mgd_ray.distributed.phases.targets import target_streams
    from mgd_ray.distributed.phases.tune import selection_set, tpe_startup_trials
    from mgd_ray.distributed.plan import ablation_seeds
    from mgd_ray.distributed.study_config import StudyConfig

    cfg = StudyConfig.from_options(seed=4, seeds=3)
    assert ablation_seeds(cfg) == [5, 6, 7] and target_streams(cfg) == [4, 5, 6, 7]
    assert target_streams(StudyConfig.from_options(seed=4, seeds=3, ablation=False)) == [4]
    # a third of the search at random, within 2..10: 3 trials -> 2 random, 1 from the model;
    # 8 -> 2 and 6; 60 -> 10 and 50
    assert [tpe_startup_trials(n) for n in (1, 3, 8, 12, 60)] == [2, 2, 2, 4, 10]
    assert selection_set("1/8") == "holdout" and selection_set("full") == "val"


def test_cli_without_gpus_option_uses_the_gpu_when_there_is_one(monkeypatch, tmp_path):
    from mgd_ray.distributed import options

    monkeypatch.setattr(options, "detect_gpus", lambda address: 2)
    args = tune_loss_weights.get_args_parser().parse_args(["--output-dir", str(tmp_path)])
    cfg, _ = options.resolve_study(**vars(args))
    budget = options.gpu_budget("synthetic")
    assert (cfg.cluster.gpus_per_trial, cfg.cluster.workers_per_trial, cfg.cluster.device) == (
        1,
        1,
        "gpu",
    )
    assert (cfg.budget.iterations, cfg.budget.seeds, cfg.budget.num_samples) == (
        budget["iterations"],
        budget["seeds"],
        budget["num_samples"],
    )
    args = tune_loss_weights.get_args_parser().parse_args(
        ["--output-dir", str(tmp_path), "--gpus-per-trial", "0", "--iterations", "7"]
    )
    cfg, _ = options.resolve_study(**vars(args))
    assert (cfg.cluster.gpus_per_trial, cfg.budget.iterations, cfg.cluster.device) == (0, 7, "cpu")


def test_progress_line_counts_phases_and_estimates_what_is_left():
    from mgd_ray.distributed.progress import StudyProgress

    now = [0.0]
    lines = []
    progress = StudyProgress(
        ["1/8", "1/4"],
        {"teacher": 4, "trial": 10},
        clock=lambda: now[0],
        print_fn=lambda text, flush=False: lines.append(text),
    )
    progress.already_done("trial", 2)  # from before a --resume: counted, not timed
    progress.set_phase("teachers")
    assert "left unknown yet" in lines[-1] and "trials 2/10" in lines[-1]
    now[0] = 60.0
    progress.finished("teacher")
    now[0] = 120.0
    progress.finished("teacher")  # 60 s per teacher; trials guessed at a third of that: 20 s
    assert progress.left_seconds() == pytest.approx(2 * 60 + 8 * 20)
    progress.finished("teacher")
    progress.finished("teacher")
    progress.set_phase("search", "1/4")
    now[0] = 220.0
    progress.finished("trial")  # 100 s since the trials began: 7 trials left at 100 s
    assert progress.left_seconds() == pytest.approx(7 * 100)
    assert lines[-1] == (
        "== study: search, protocol 1/4 (2 of 2) | teachers 4/4, trials 3/10 finished | "
        "elapsed 3m40s | left ~11m40s (estimate) =="
    )


def test_background_score_is_the_background_share_over_classes_present(monkeypatch):
    import types

    from mgd_ray.data import dataset

    labels = {"a": np.array([[0, 0, 1], [2, 255, 0]]), "b": np.array([[0, 1, 0], [0, 0, 255]])}
    # 10 labelled pixels (two are 255), 7 of them background; classes 1 and 2 present (IoU 0),
    # classes 3-5 absent (not counted): mIoU = (7/10 + 0 + 0) / 3
    monkeypatch.setattr(dataset, "load_label", lambda sample: labels[sample])
    score = dataset.background_miou(types.SimpleNamespace(samples=["a", "b"]), num_classes=6)
    assert score == pytest.approx((7 / 10) / 3)


def test_export_keeps_the_best_student_and_prune_drops_finished_trials(tmp_path):
    import torch

    from mgd_ray.distributed.export import export_best, prune_trial_weights

    results, runs = tmp_path / "results", tmp_path / "ray"
    trials = results / "trials" / "1_8"
    trials.mkdir(parents=True)
    for trial_id, miou, status, weight in (
        ("a", 0.3, "completed", 1.0),
        ("b", 0.5, "completed", 2.0),
        ("c", 0.9, "early_stopped", 3.0),
        ("d", None, "running", 4.0),
    ):
        checkpoint = runs / f"train-{trial_id}" / "checkpoint_0"
        checkpoint.mkdir(parents=True)
        torch.save({"w": torch.tensor([weight])}, checkpoint / "model.pt")
        (trials / f"{trial_id}.json").write_text(
            json.dumps(
                {
                    "trial_id": trial_id,
                    "protocol": "1/8",
                    "kind": "search",
                    "variant": "search",
                    "status": status,
                    "miou": miou,
                    "checkpoint_path": str(checkpoint),
                    "config": {"w_pixel": weight},
                }
            )
        )
    study = {"student": "deeplabv3plus_resnet18", "num_classes": 6, "dataset": "synthetic"}
    path = export_best(str(results), "1/8", study)
    assert path == str(results / "models" / "1_8" / "best_student.pt")
    assert torch.load(path)["w"].item() == 2.0  # b: the best completed trial (c stopped early)
    info = json.loads((results / "models" / "1_8" / "best_student.json").read_text())
    assert (info["trial_id"], info["miou"], info["arch"], info["num_classes"]) == (
        "b",
        0.5,
        study["student"],
        6,
    )
    # --export-ablation-students: one file per row, the best completed trial of that variant only
    (trials / "a.json").write_text(
        (trials / "a.json").read_text().replace('"variant": "search"', '"variant": "pixel"')
    )
    row = export_best(str(results), "1/8", study, name="pixel", variant="pixel")
    assert row.endswith(os.path.join("1_8", "pixel.pt")) and torch.load(row)["w"].item() == 1.0
    assert sorted(prune_trial_weights(str(results), "1/8", "search", str(runs))) == ["a", "b", "c"]
    assert sorted(os.listdir(runs)) == ["train-d"]  # a running trial keeps its checkpoint
    # After a kill between export and prune (or on a second export): the export stays as it is.
    assert export_best(str(results), "1/8", study) == path and torch.load(path)["w"].item() == 2.0


def test_a_tune_run_left_with_running_trials_stops_the_study(tmp_path):
    from mgd_ray.distributed.phases.tune import StudyInterrupted, keep_best_drop_the_rest

    cfg = StudyConfig.from_options(output_dir=str(tmp_path))
    open_study_folder(cfg)
    runs = tmp_path / "ray"
    folder = tmp_path / "trials" / "1_8"
    folder.mkdir(parents=True)
    for trial_id, status in (("done", "completed"), ("mid", "running")):
        (runs / f"train-{trial_id}").mkdir(parents=True)
        (folder / f"{trial_id}.json").write_text(
            json.dumps(
                {
                    "trial_id": trial_id,
                    "protocol": "1/8",
                    "kind": "ablation",
                    "variant": "pixel",
                    "status": status,
                    "miou": None,
                }
            )
        )
    spec = types.SimpleNamespace(protocol="1/8", run=types.SimpleNamespace(storage_path=str(runs)))
    with pytest.raises(StudyInterrupted, match="mid.*--resume"):
        keep_best_drop_the_rest(cfg, spec, "ablation")
    assert sorted(os.listdir(runs)) == [
        "train-mid"
    ]  # the unfinished trial keeps what it resumes from


def test_trials_sharing_a_gpu_ask_ray_for_a_fraction_of_it(tmp_path):
    from mgd_ray.distributed.plan import plan_protocol
    from mgd_ray.distributed.study_config import StudyConfig
    from mgd_ray.distributed.trial import scaling_config

    cfg = StudyConfig.from_options(
        output_dir=str(tmp_path), gpus_per_trial=1, trials_per_gpu=4, protocols=("1/8",)
    )
    assert (
        cfg.cluster.gpus_per_worker == 0.25 and cfg.cluster.devices_per_trial == 0.25
    )  # device-hours count a quarter GPU
    run = plan_protocol(cfg, "1/8").run
    assert run.gpus_per_worker == 0.25
    scaling = scaling_config(run)
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 1, "GPU": 0.25}
    whole = StudyConfig.from_options(
        output_dir=str(tmp_path), gpus_per_trial=2, workers_per_trial=2
    )
    assert whole.cluster.gpus_per_worker == 1 and whole.cluster.devices_per_trial == 2
    with pytest.raises(ValueError, match="--trials-per-gpu=2 .*--gpus-per-trial 1"):
        StudyConfig.from_options(
            output_dir=str(tmp_path), gpus_per_trial=2, workers_per_trial=2, trials_per_gpu=2
        )
    with pytest.raises(ValueError, match="--trials-per-gpu=0"):
        StudyConfig.from_options(output_dir=str(tmp_path), trials_per_gpu=0)


def test_checkpoint_paths_ray_reports_become_uris_on_the_studys_storage():
    from mgd_ray.storage import as_uri

    # Ray reports an s3:// checkpoint as a path on its pyarrow filesystem, without the scheme.
    assert (
        as_uri("bucket/studies/s/train-1/checkpoint_0", "s3://bucket/studies/s")
        == "s3://bucket/studies/s/train-1/checkpoint_0"
    )
    assert as_uri("/tmp/r/train-1/checkpoint_0", "/tmp/r") == "/tmp/r/train-1/checkpoint_0"
    assert as_uri("s3://b/x", "s3://b") == "s3://b/x"


def test_trial_weights_are_kept_when_no_best_student_could_be_exported(tmp_path, monkeypatch):
    import mgd_ray.distributed.phases.tune as study
    from mgd_ray.distributed.study_config import StudyConfig
    from mgd_ray.schema import write_json_atomic

    cfg = StudyConfig.from_options(output_dir=str(tmp_path), protocols=("1/8",))
    write_json_atomic(
        str(tmp_path / "trials" / "1_8" / "t1.json"),
        {
            "trial_id": "t1",
            "protocol": "1/8",
            "kind": "search",
            "status": "completed",
            "miou": 0.3,
            "checkpoint_path": "bucket/without/scheme",
        },
    )
    pruned = []
    monkeypatch.setattr(study, "prune_trial_weights", lambda *a: pruned.append(a))
    monkeypatch.setattr(study, "study_json", lambda cfg: {})
    monkeypatch.setattr(study, "teachers_json", lambda cfg: {})
    spec = types.SimpleNamespace(
        protocol="1/8", run=types.SimpleNamespace(storage_path=str(tmp_path / "ray"))
    )
    study.keep_best_drop_the_rest(cfg, spec, "search")  # the weights are not where the record says
    assert pruned == [] and not (tmp_path / "models" / "1_8" / "best_student.pt").exists()


def test_holders_names_the_trial_whose_train_run_holds_a_group(monkeypatch):
    """The owner chain reservations.holders follows, on a hand-built cluster state: a trial's
    actor owns its Train controller, which created the group; another job's group is named by its
    job."""
    from mgd_ray.distributed import ray_private, reservations

    group = ray_private.Reservation(
        "g1", "CREATED", ({"CPU": 1.0}, {"CPU": 1.0}), "01000000", "ctrl", False, False
    )
    other = ray_private.Reservation(
        "g2", "CREATED", ({"GPU": 1.0},), "02000000", "x", False, False
    )
    actors = [
        ray_private.Actor(
            "ctrl", "TrainController", "ALIVE", "01000000", "w-ctrl", "w-trial", None, False, {}
        ),
        ray_private.Actor(
            "trial", "ImplicitFunc", "ALIVE", "01000000", "w-trial", "w-driver", "tg", False, {}
        ),
        ray_private.Actor(
            "h", "Holder", "ALIVE", "03000000", "w-h", "w-x", None, False, {"CPU": 1.0}
        ),
    ]

    class Trial:
        trial_id = "abc_00001"

        class temporary_state:
            ray_actor = object()

    monkeypatch.setattr(ray_private, "actors", lambda: actors)
    monkeypatch.setattr(ray_private, "trial_actor_id", lambda trial: "trial")
    assert (
        reservations.holders([group, other], [Trial], "01000000")
        == "trial abc_00001: 2 x {CPU: 1}; job 02000000: 1 x {GPU: 1}; actor Holder of job "
        "03000000: {CPU: 1}"
    )


def test_a_target_writer_that_fails_is_recorded_and_its_partial_store_deleted(
    tmp_path, monkeypatch
):
    """The trials then run their teachers themselves (the spec comes back without a store), but
    the fallback is no longer silent: targets.json says so with the error, and nothing of the
    half-written store is left on the storage."""
    from mgd_ray import storage
    from mgd_ray.distributed.phases import targets as study
    from mgd_ray.distributed.plan import plan_protocol
    from mgd_ray.distributed.trial import JOB_KEY

    cfg = StudyConfig.from_options(
        output_dir=str(tmp_path), protocols=("1/8",), max_concurrent_trials=2
    )
    open_study_folder(cfg)
    teachers = {}
    for role in ("deep", "wide"):
        teachers[role] = str(tmp_path / f"{role}.pt")
        (tmp_path / f"{role}.pt").write_bytes(role.encode())
    spec = plan_protocol(cfg, "1/8").trial_spec(teachers["deep"], teachers["wide"])
    store = study.targets_store(cfg, spec)

    class DyingWriter:
        def __init__(self, loop, train_loop_config, **kwargs):
            self.chunk = train_loop_config[JOB_KEY].first

        def fit(self):
            storage.write_bytes(storage.join(store, f"part-{self.chunk}.zst"), b"half")
            raise RuntimeError("worker died: out of host memory")

    monkeypatch.setattr(study, "trainer_without_ray_cleaner", DyingWriter)
    assert study.prepare_targets(cfg, spec) == spec  # live teachers in every trial
    assert not os.path.exists(store)
    with open(tmp_path / "targets.json") as f:
        listing = json.load(f)["1/8"]
    assert listing["store"] == store and listing["deleted"] is True
    assert "worker died: out of host memory" in listing["fallback"]
    from mgd_ray.report import generate_report

    paths = generate_report(str(tmp_path))
    with open(paths["index"]) as f:
        assert (
            "**1/8: the shared teacher targets could not be computed** (worker died: out of "
            "host memory); the partial store was deleted" in f.read()
        )


def test_gpus_are_found_on_the_node_types_of_a_cluster_whose_gpu_workers_start_at_zero(
    monkeypatch, tmp_path
):
    """cluster.yaml's head has no GPU and its GPU workers start at zero: the cluster's current
    total is 0 GPUs, but its autoscaler can start 8 gpu_1x (1 GPU) and 2 gpu_4x (4 GPUs) nodes."""
    import ray

    from mgd_ray.distributed import cluster, options

    head = {"Alive": True, "NodeManagerAddress": "10.0.0.1", "NodeID": "f" * 56}
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0})
    monkeypatch.setattr(ray, "nodes", lambda: [{**head, "Resources": {"CPU": 8.0}}])
    monkeypatch.setattr(cluster.ray_private, "cluster_config", lambda: None)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv(cluster.AUTOSCALING_CONFIG_ENV, os.path.join(repo, "cluster.yaml"))
    assert options.detect_gpus("auto") == 8 * 1 + 2 * 4
    cfg, devices = options.resolve_study(address="auto", output_dir=str(tmp_path))
    assert cfg.cluster.gpus_per_trial == 1 and devices.startswith("16 GPU(s) found")

    cpu_only = tmp_path / "cpu.yaml"
    cpu_only.write_text("available_node_types:\n  cpu: {resources: {CPU: 4}, max_workers: 3}\n")
    monkeypatch.setenv(cluster.AUTOSCALING_CONFIG_ENV, str(cpu_only))
    assert options.detect_gpus("auto") == 0
