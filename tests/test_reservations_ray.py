"""Every trial gives back what its Train run reserved, however it ends (issue 19), on a Ray head
without the dashboard, on one with it, and on one beside a second Ray instance on the machine.

The trials are the study's own (`phases.tune.tune_run`, `trial.run_trial`, the records) with a
scripted training loop in place of MGD, so that each ends in a chosen way, quickly: completed,
stopped by ASHA mid-run, failed, diverged, and cut off by an interrupted driver (SIGINT, as
Ctrl+C). Each trial's Train run takes both CPUs of the head (2 workers), so the study runs one
trial at a time and a single leaked reservation would stall the next trial; a short worker-start
timeout then fails it, and the records say so.
"""

import math
import os
import signal
import sys
import time

import pytest
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from mgd_ray.distributed import ray_private
from mgd_ray.distributed.phases import tune as study
from mgd_ray.distributed.plan import concurrency, plan_protocol
from mgd_ray.distributed.records import TrialRecorder
from mgd_ray.distributed.spec import SearchPoint, from_tune, param_space
from mgd_ray.distributed.study_config import StudyConfig
from mgd_ray.distributed.trial import JOB_KEY, report_divergence, run_trial
from mgd_ray.engine import DivergedError
from tests.study_helpers import Head, cluster_is_idle, records, wait_for

pytestmark = pytest.mark.ray
# The scripted loops below run on the heads' workers, which cannot import this test module: Ray
# pickles them by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
SETUPS = ("no dashboard", "dashboard", "beside a second instance")
# Trial (ablation row) -> how its scripted Train run ends.
ENDINGS = ("completes", "stopped_by_asha", "fails", "diverges", "interrupted")


@pytest.fixture(scope="module", params=SETUPS)
def head(request):
    heads = [Head(num_cpus=1)] if request.param == "beside a second instance" else []
    try:  # the heads are stopped however the module ends: a leftover head holds ports (52365)
        heads.append(Head(num_cpus=2, dashboard=request.param == "dashboard", token_auth=False))
        ray.init(address=heads[-1].address, log_to_driver=False)
        yield request.param
    finally:
        ray.shutdown()
        for head in heads:
            head.stop()


def scripted_loop(config):
    """A Train worker's loop that ends as its trial's row says (every rank runs it): the row is
    told by the confidence threshold of the trial's point, ENDINGS.index(row) / 10."""
    ending = ENDINGS[round(10 * config[JOB_KEY].confidence_threshold)]
    if ending == "fails":
        raise RuntimeError("scripted failure")
    if ending == "diverges":
        report_divergence(DivergedError(2, {"loss": math.nan}))
        return
    miou = 0.1 if ending == "stopped_by_asha" else 0.9
    for iteration in range(1, 5):
        ray.train.report({"iteration": iteration, "miou": miou})
        if ending == "interrupted":
            time.sleep(30)  # the driver is interrupted meanwhile


def scripted_trial(config):
    run_trial(config, loop=scripted_loop)


class RecordAndInterrupt(TrialRecorder):
    """The study's trial records, and SIGINT to this process (as Ctrl+C) once the "interrupted"
    trial has reported."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        super().on_trial_result(iteration, trials, trial, result, **info)
        if from_tune(trial.config).variant == "interrupted":
            os.kill(os.getpid(), signal.SIGINT)


@ray.remote(num_cpus=1)
class Holder:
    """Another job's actor holding one CPU."""

    def ping(self):
        return True


def study_config(tmp_path, **changes):
    """One Train worker taking both CPUs of the head (a second worker would only add start-up)."""
    tiny = dict(protocols=("1/8",), iterations=4, eval_every=1, crop_size=32, batch_size=2)
    options = dict(
        tiny,
        output_dir=str(tmp_path / "out"),
        loader_workers=0,
        cpus_per_worker=2,
        worker_start_timeout_s=20,
        worker_start_retries=0,
        max_failures=0,
        verbose=False,
    )
    return StudyConfig.from_options(**{**options, **changes})


def train_groups():
    """This job's placement groups made by Train controllers and not removed."""
    job = ray.get_runtime_context().get_job_id()
    return [
        g
        for g in ray_private.placement_groups()
        if g.job_id == job and g.creator_actor_id and g.state != "REMOVED"
    ]


def test_trials_give_back_their_workers_however_they_end(head, tmp_path):
    """Every ending on the head without the dashboard (where leaks used to stall the study); on the
    other heads the two endings that stop a trial from outside, after the trial ASHA compares
    with."""
    cluster_is_idle()
    cfg = study_config(tmp_path)
    spec = plan_protocol(cfg, "1/8").trial_spec(
        "no-teacher.pt", "no-teacher.pt"
    )  # scripted: nothing is read
    assert concurrency(cfg, spec.run) == 1  # both CPUs per trial: what the head can hold
    endings = (
        ENDINGS if head == "no dashboard" else ("completes", "stopped_by_asha", "interrupted")
    )
    rows = [
        (ending, 0, SearchPoint(confidence_threshold=ENDINGS.index(ending) / 10))
        for ending in endings
    ]
    scheduler = ASHAScheduler(
        time_attr="iteration",
        metric="miou",
        mode="max",
        max_t=4,
        grace_period=2,
        reduction_factor=2,
        stop_last_trials=False,
    )
    recorder = RecordAndInterrupt(cfg.storage.output_dir, "1/8", "ablation", 4, "cpu", 2)
    started = time.time()
    study.tune_run(
        cfg,
        "endings",
        param_space(spec, rows),
        tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=concurrency(cfg, spec.run)),
        recorder,
        trainable=scripted_trial,
    )
    print(
        f"[{head}] {len(endings)} trials, each ending its own way, in "
        f"{time.time() - started:.0f} s"
    )

    by_ending = {r["variant"]: r for r in records(tmp_path / "out")}
    assert set(by_ending) == set(endings)
    assert by_ending["completes"]["status"] == "completed"
    assert by_ending["stopped_by_asha"]["status"] == "early_stopped"
    assert by_ending["stopped_by_asha"]["iteration"] == 2  # stopped mid-run, at ASHA's first rung
    assert (
        by_ending["interrupted"]["status"] == "running"
    )  # the study stopped there; --resume goes on
    if head == "no dashboard":
        assert (
            by_ending["fails"]["status"] == "failed"
            and "scripted failure" in by_ending["fails"]["error"]
        )
        assert (
            by_ending["diverges"]["status"] == "failed"
            and by_ending["diverges"]["diverged"]["iteration"] == 2
        )
    # Nothing an ended trial reserved is left, and every CPU is free again within seconds.
    assert train_groups() == []
    returned = time.time()
    wait_for(
        lambda: ray.available_resources().get("CPU", 0) == 2, 10, "both CPUs free again", step=0.2
    )
    print(f"[{head}] both CPUs free {time.time() - returned:.1f} s after the run returned")
    assert not [
        a
        for a in ray_private.actors()
        if a.class_name == "PlacementGroupCleaner" and a.state != "DEAD"
    ]


@pytest.mark.parametrize("head", ["no dashboard"], indirect=True)  # the same on every head
def test_trials_waiting_for_workers_are_said_to_wait_and_who_holds_the_cluster(
    head, tmp_path, capsys
):
    cluster_is_idle()
    holder = Holder.remote()  # holds 1 of the 2 CPUs: a trial's 2-CPU worker cannot start
    ray.get(holder.ping.remote())
    try:
        # Ray Train gives up each start after 6 s and retries once; the study says who holds the
        # cluster once the trial has waited 6 s, across the retry.
        cfg = study_config(tmp_path, worker_start_timeout_s=6, worker_start_retries=1)
        spec = plan_protocol(cfg, "1/8").trial_spec("no-teacher.pt", "no-teacher.pt")
        recorder = TrialRecorder(cfg.storage.output_dir, "1/8", "ablation", 4, "cpu", 2)
        study.tune_run(
            cfg,
            "starved",
            param_space(spec, [("completes", 0, SearchPoint())]),
            tune.TuneConfig(max_concurrent_trials=1),
            recorder,
            trainable=scripted_trial,
        )
    finally:
        ray.kill(holder)
    out = capsys.readouterr().out
    assert "1 trial(s) waiting for their Train workers (1 x {CPU: 2})" in out, out[-3000:]
    assert "nothing could be placed for" in out and "actor Holder of job" in out, out[-3000:]
    (record,) = records(tmp_path / "out")
    assert record["status"] == "failed" and "worker group startup timed out" in record["error"]
    assert train_groups() == []
