"""--mlflow-uri checked before Ray starts and the trial tracker's runs on a real local store (no
Ray instance: the tracker is driven as Tune drives it); the console filter on a hand-written log
sample and the live progress line."""

import io
import logging
import sys

import pytest
import ray

from mgd_ray.distributed import console
from mgd_ray.distributed.progress import StudyProgress
from mgd_ray.distributed.study_config import StudyConfig
from mgd_ray.distributed.tracking import TrialTracker, open_tracking
from tests.study_helpers import free_port, run_cli, search_config


@pytest.mark.parametrize(
    "uri, says",
    [
        ("http://127.0.0.1:{port}", "the MLflow store cannot be opened"),
        ("sqlite:////no/such/folder/mlflow.db", "no folder '/no/such/folder'"),
        ("mlruns", "expected a tracking URI"),
    ],
)
def test_an_mlflow_store_that_cannot_be_opened_is_refused_before_ray_starts(
    uri, says, capsys, tmp_path
):
    uri = uri.format(port=free_port())  # nothing listens there
    code, err = run_cli(
        ["--smoke", "--mlflow-uri", uri, "--output-dir", str(tmp_path / "o")], capsys
    )
    assert code == 2
    assert f"--mlflow-uri {uri}" in err.replace(repr(uri), uri) and says in err
    assert not (tmp_path / "o").exists() and not ray.is_initialized()


class FakeTrial:
    """What the tracker reads of a Tune trial: its id, config and name."""

    def __init__(self, trial_id, point):
        self.trial_id, self.config = trial_id, search_config(point)

    def __str__(self):
        return f"run_trial_{self.trial_id}"


def test_trial_runs_hold_the_point_the_evaluations_and_how_each_trial_ended(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = StudyConfig.from_options(output_dir=str(tmp_path / "study"), mlflow_uri=uri)
    tracking = open_tracking(cfg)
    tracker = TrialTracker(tracking, "1/8", "search", max_iterations=10)
    tracker.setup()
    point = dict(w_pixel=0.5, lambda_semantic=0.001, lambda_region=20.0, confidence_threshold=0.7)
    ends = {"done": (10, False), "stopped": (5, False), "broken": (5, True)}
    for trial_id, (last, failed) in ends.items():
        trial = FakeTrial(trial_id, point)
        tracker.log_trial_start(trial)
        for it in range(5, last + 1, 5):
            tracker.log_trial_result(it, trial, {"iteration": it, "miou": it / 100, "loss": 1.0})
        tracker.log_trial_end(trial, failed=failed)
    # The driver is killed while "killed" runs; on --resume a new tracker (Tune's restored copy)
    # finds its run rather than opening another, and the trial ends there.
    killed = FakeTrial("killed", point)
    tracker.log_trial_start(killed)
    tracker.log_trial_result(5, killed, {"iteration": 5, "miou": 0.05})
    again = TrialTracker(tracking, "1/8", "search", max_iterations=10)
    again.setup()
    again.log_trial_start(FakeTrial("killed", point))
    again.log_trial_result(10, killed, {"iteration": 10, "miou": 0.1})
    again.log_trial_end(killed)
    ends["killed"] = (10, False)

    client = MlflowClient(uri)
    runs = {
        r.data.tags["trial_id"]: r
        for r in client.search_runs([tracking.experiment_id], "tags.role = 'trial'")
    }
    assert sorted(runs) == sorted(ends)
    expected = {
        "done": ("completed", "FINISHED"),
        "stopped": ("early_stopped", "FINISHED"),
        "broken": ("failed", "FAILED"),
    }
    for trial_id, (status, state) in expected.items():
        run = runs[trial_id]
        assert (run.data.tags["status"], run.info.status) == (status, state)
        assert run.data.tags["mlflow.parentRunId"] == tracking.parent_run_id
        assert {k: float(run.data.params[k]) for k in point} == point
        assert run.data.params["protocol"] == "1/8" and run.data.params["variant"] == "search"
        history = client.get_metric_history(run.info.run_id, "miou")
        assert [(m.step, m.value) for m in history] == [
            (it, it / 100) for it in range(5, ends[trial_id][0] + 1, 5)
        ]
        assert run.data.metrics["final_miou"] == ends[trial_id][0] / 100
    parent = client.get_run(tracking.parent_run_id)
    assert parent.data.tags["role"] == "study" and parent.info.status == "RUNNING"


HARMLESS = (
    "\x1b[36m(TrainController pid=7070)\x1b[0m [2026-12-06 15:02:28,390 E 7070 7149] "
    "core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' and ID: "
    "'7d919b021adabbb9227e906301000000' has constructor arguments in the object store and "
    "max_restarts > 0. If the arguments in the object store go out of scope or are lost, the "
    "actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more "
    "details."
)
SAMPLE = [
    "== study: search, protocol 1/8 (1 of 1) | trials 0/2 finished ==",
    HARMLESS,
    HARMLESS.replace("7d919b02", "f7c56110") + "\x1b[32m [repeated 2x across cluster] (Ray "
    "deduplicates logs by default. Set RAY_DEDUP_LOGS=0 to disable log deduplication)\x1b[0m",
    # the same notice for an actor that is not Ray Train's watcher: unknown, kept
    HARMLESS.replace("'PreemptionWatcher'", "'TeacherCache'"),
    "(TrainController pid=7679) [2026-12-06 15:02:53,525 E 7679 7842] core_worker.cc:2465: "
    "Something else went wrong",
    "(RayTrainWorker pid=1) RuntimeError: PreemptionWatcher is mentioned in an unknown error",
]


def test_the_console_filter_drops_known_harmless_lines_and_keeps_the_rest():
    target = io.StringIO()
    stream = console.FilteredStream(target)
    text = "\n".join(SAMPLE) + "\n"
    stream.write(text[:100])  # lines arrive in pieces
    stream.write(text[100:])
    kept = target.getvalue().splitlines()
    assert kept == [SAMPLE[0], *SAMPLE[3:]]
    assert stream.hidden == 2


# From a smoke study's console (2026-12-07): Tune's header and folder lines, Optuna's notice and
# the traceback a trial's actor prints as Ray ends it after its trial finished.
ACTOR = "\x1b[36m(run_trial pid=6581)\x1b[0m "
EXIT_TRACEBACK = [
    ACTOR + "Exception ignored in: <function WeakSet.__init__.<locals>._remove at 0x7fc9b043e480>",
    ACTOR + "Traceback (most recent call last):",
    ACTOR + '  File "/usr/lib/python3.11/_weakrefset.py", line 39, in _remove',
    ACTOR + "    def _remove(item, selfref=ref(self)):",
    ACTOR,
    ACTOR + '  File "/venv/lib/python3.11/site-packages/ray/_private/worker.py", line 1063, in '
    "sigterm_handler",
    ACTOR + "    raise_sys_exit_with_custom_error_message(",
    ACTOR + '  File "python/ray/_raylet.pyx", line 712, in ray._raylet.'
    "raise_sys_exit_with_custom_error_message",
    ACTOR + "SystemExit: 1",
]
TUNE_HEADER = [
    "[I 2026-12-07 09:08:23,615] A new study created in RDB with name: mgd-1_8",
    "╭──────────────────────────────────────────────────────────╮",
    "│ Configuration for experiment     search-1_8              │",
    "├──────────────────────────────────────────────────────────┤",
    "│ Search algorithm                 SearchGenerator         │",
    "│ Scheduler                        AsyncHyperBandScheduler │",
    "│ Number of trials                 2                       │",
    "╰──────────────────────────────────────────────────────────╯",
    "",
    "View detailed results here: /tmp/smoke/ray/smoke/search-1_8",
    "To visualize your results with TensorBoard, run: `tensorboard --logdir /tmp/ray/session/a`",
    "2026-12-07 09:08:56,076\tINFO tune.py:1007 -- Wrote the latest version of all result files "
    "and experiment state to '/tmp/smoke/ray/smoke/search-1_8' in 0.0076s.",
]


def test_tunes_header_and_a_trial_actors_exit_traceback_are_hidden_other_tracebacks_kept():
    study = "[1/8 search] trial 1975ea2d (search, seed 0) completed: mIoU 0.107 at iteration 8"
    # the same start, but a real error: kept whole, and so is a block another line breaks into
    failing = [*EXIT_TRACEBACK[:2], ACTOR + "RuntimeError: the GPU fell off"]
    broken = [*EXIT_TRACEBACK[:3], "(RayTrainWorker pid=7) something else", *EXIT_TRACEBACK[3:]]
    target = io.StringIO()
    stream = console.FilteredStream(target)
    for line in [*TUNE_HEADER, study, *EXIT_TRACEBACK, study, *failing, *broken]:
        stream.write(line + "\n")
    stream.write(EXIT_TRACEBACK[0] + "\n")  # held back, then written out at the end
    stream.close_line()
    assert target.getvalue().splitlines() == [
        study,
        study,
        *failing,
        *broken,
        EXIT_TRACEBACK[0],
    ]
    assert stream.hidden == len(TUNE_HEADER) - 1 + len(EXIT_TRACEBACK)  # the blank line uncounted


def test_the_live_line_stays_below_what_is_printed_and_harmless_lines_are_counted():
    terminal = io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = terminal  # both streams on one terminal

    # a logger made before the console, holding the terminal, as Ray's and Optuna's do
    class RayHandler(logging.StreamHandler):  # Ray's PlainRayHandler is a subclass
        pass

    logger = logging.getLogger("mgd_ray_test.tune")
    handler = RayHandler(terminal)
    logger.addHandler(handler)
    try:
        with console.study_console(status=lambda: "== ticking ==", live=True) as show:
            show("== study: search ==")
            print("a line of the study")
            print(HARMLESS)
            logger.warning(TUNE_HEADER[-1])  # Tune's "Wrote the latest version" line: hidden
            logger.warning("a warning Ray logs")
            sys.stderr.write("an unknown error\n")
        assert handler.stream is terminal  # given back
    finally:
        sys.stdout, sys.stderr = saved
        logger.removeHandler(handler)
    out = terminal.getvalue()
    assert "a warning Ray logs" in out and "Wrote the latest version" not in out
    assert "== study: search ==" in out and "\r" in out  # drawn in place, not as lines
    assert out.index("a line of the study") < out.index("an unknown error")
    assert "PreemptionWatcher" not in out
    assert out.rstrip().endswith(
        "(2 known-harmless line(s) of Ray, Tune and Optuna hidden from the console: "
        "mgd_ray/distributed/console.py lists them)"
    )


def test_the_progress_line_gives_the_best_final_miou_of_the_current_protocol():
    lines = []
    progress = StudyProgress(
        ["1/8", "1/4"], {"trial": 4}, clock=lambda: 0.0, print_fn=lambda t, flush: lines.append(t)
    )
    progress.set_phase("search", "1/8")
    assert "best mIoU" not in lines[-1]
    progress.scored(0.25)
    progress.scored(0.125)
    progress.finished("trial")
    assert "trials 1/4 finished | best mIoU 0.2500 |" in lines[-1]
    progress.set_phase("search", "1/4")  # another protocol: its own best
    assert "best mIoU" not in lines[-1]
