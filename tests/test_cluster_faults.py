"""Faults of a cluster study, on the local autoscaled cluster (cluster-local.yaml, Ray's
fake_multinode provider), one cluster for the module, started with token authentication:
- the README's job-submission flow: `ray job submit` with the token runs a study, a client without
  it (or with a wrong one) is refused;
- a worker node killed in the middle of a trial: Ray Train restarts the run from its last
  checkpoint on another node and the trial completes, its record counting the restart, with no
  lost or repeated history;
- the driver killed and the study resumed with `--resume`: no trial is lost or recorded twice.
Each test prints how long the cluster took to notice and carry on (docs/cluster-faults.md)."""

import json
import os
import secrets
import signal
import subprocess
import time

import pytest

from mgd_ray.distributed import local_cluster
from mgd_ray.distributed.cluster import AUTOSCALING_CONFIG_ENV
from tests.study_helpers import (
    CLI,
    RAY,
    REPO,
    alive_nodes,
    free_port,
    random_teacher_options,
    records,
    smoke_argv,
    start_driver,
    wait_for,
)

pytestmark = [pytest.mark.ray, pytest.mark.cluster]
TOKEN = secrets.token_hex(16)
# The cluster's own token, given to the head and every client here through the environment, so
# the test neither reads nor writes ~/.ray/auth_token.
ENV = {
    **os.environ,
    "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    "RAY_AUTH_MODE": "token",
    "RAY_AUTH_TOKEN": TOKEN,
}
ENV.pop("RAY_ADDRESS", None)
ENV.pop("RAY_AUTH_TOKEN_PATH", None)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state_path = str(tmp_path_factory.mktemp("cluster") / "cluster.json")
    state = local_cluster.up(
        port=free_port(),
        dashboard_port=free_port("127.0.0.1"),
        state_path=state_path,
        idle_timeout_minutes=0.25,
        env=ENV,
    )
    yield {**state, "state_path": state_path}
    local_cluster.down(state_path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teacher_options(tmp_path_factory.mktemp("teachers"))


def study_argv(cluster, out, teachers, options):
    """A quiet --smoke study without ablation on the cluster, writing to `out`, with `options` (the
    command-line words after the teacher options, as one string)."""
    return smoke_argv(cluster["address"], out, teachers, "--quiet", *options.split())


def start_study(cluster, argv, log):
    """The study driver `argv` started on the cluster (its autoscaling config in the environment),
    its output in `log`."""
    return start_driver(argv, log, {**ENV, AUTOSCALING_CONFIG_ENV: cluster["config"]})


def iterations(record):
    return [h["iteration"] for h in record["history"]]


def client_without_token(tmp_path, **extra):
    env = {k: v for k, v in ENV.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token to fall back on
    return {**env, **extra}


def test_job_submission_with_the_token_runs_a_study_and_a_client_without_it_is_refused(
    cluster, teachers, tmp_path
):
    url = cluster["dashboard"]
    for env, says in (
        (client_without_token(tmp_path), "Missing authentication token"),
        (
            client_without_token(tmp_path, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 32),
            "Invalid authentication token",
        ),
    ):
        refused = subprocess.run(
            [RAY, "job", "list", "--address", url],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert refused.returncode != 0 and says in refused.stdout + refused.stderr, refused.stderr[
            -2000:
        ]

    out = tmp_path / "study"
    runtime_env = {"env_vars": {"PYTHONPATH": REPO, AUTOSCALING_CONFIG_ENV: cluster["config"]}}
    # Inside a job RAY_ADDRESS names the cluster, so the study needs no --address.
    entrypoint = CLI + [
        "--smoke",
        "--no-ablation",
        "--gpus-per-trial",
        "0",
        "--num-samples",
        "1",
        "--output-dir",
        str(out),
        "--quiet",
        *teachers,
    ]
    started = time.time()
    for attempt in range(6):  # the job agent answers 500 "No available agent" until it has started
        submitted = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                url,
                "--runtime-env-json",
                json.dumps(runtime_env),
                "--",
                *entrypoint,
            ],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=480,
        )
        if "No available agent to submit job" not in submitted.stdout + submitted.stderr:
            break
        time.sleep(10)
    print(f"token-auth job submission of a one-trial smoke study: {time.time() - started:.0f} s")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    [trial] = records(out)
    assert trial["status"] == "completed" and iterations(trial) == [4, 8]
    assert local_cluster.FAKE_HEAD_NODE_ID not in trial["nodes"]  # trained on a worker node


def test_a_worker_node_lost_mid_trial_costs_a_restart_from_the_checkpoint_not_the_trial(
    cluster, teachers, tmp_path
):
    out, log = tmp_path / "study", tmp_path / "driver.log"
    argv = study_argv(
        cluster, out, teachers, "--num-samples 1 --iterations 24 --eval-every 4 --max-failures 1"
    )
    driver = start_study(cluster, argv, log)
    try:
        # The first checkpoint (iteration 4) is in: kill the node the run trains on.
        first = wait_for(
            lambda: [r for r in records(out) if r["history"]], 300, "the first report", driver, log
        )[0]
        [node] = first["nodes"]
        killed_at = time.time()
        assert local_cluster.kill_node(node, cluster["state_path"])
        gone = (
            wait_for(
                lambda: node not in alive_nodes(cluster["address"], ENV),
                120,
                "the node to be seen dead",
                step=0,
            )
            and time.time()
        )
        moved = wait_for(
            lambda: [r for r in records(out) if len(r.get("nodes", [])) == 2],
            300,
            "a report from a second node",
            driver,
            log,
        )
        restarted = time.time()
        assert driver.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    print(
        f"node lost at iteration {first['iteration']}: seen dead by the cluster after "
        f"{gone - killed_at:.0f} s, first report from the new node {restarted - killed_at:.0f} s "
        f"after the kill (at iteration {moved[0]['iteration']})"
    )
    [trial] = records(out)
    assert trial["status"] == "completed" and trial["restarts"] == 1
    assert trial["nodes"][0] == node and trial["nodes"][1] != node
    assert iterations(trial) == [
        4,
        8,
        12,
        16,
        20,
        24,
    ]  # every evaluation once, none lost or repeated


def test_a_killed_driver_resumes_on_the_cluster_without_repeating_a_trial(
    cluster, teachers, tmp_path
):
    out, log = tmp_path / "study", tmp_path / "driver.log"
    argv = study_argv(
        cluster,
        out,
        teachers,
        "--num-samples 2 --max-concurrent-trials 1 --iterations 12 --eval-every 4",
    )
    driver = start_study(cluster, argv, log)
    try:  # killed once the first trial is done and the second has started
        wait_for(
            lambda: (
                len(records(out)) == 2 and any(r["status"] == "completed" for r in records(out))
            ),
            360,
            "the first trial to complete and the second to start",
            driver,
            log,
        )
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    before = {r["trial_id"]: r for r in records(out)}
    resumed_log = tmp_path / "resumed.log"
    started = time.time()
    resumed = start_study(cluster, argv + ["--resume"], resumed_log)
    try:

        def moved_on():
            now = {r["trial_id"]: r for r in records(out)}
            return now.keys() != before.keys() or any(
                now[t]["history"] != before[t]["history"]
                or now[t]["status"] != before[t]["status"]
                for t in before
            )

        wait_for(moved_on, 300, "the resumed study to move on", resumed, resumed_log)
        continued = time.time()
        assert resumed.wait(timeout=360) == 0, resumed_log.read_text()[-3000:]
    finally:
        if resumed.poll() is None:
            os.killpg(resumed.pid, signal.SIGKILL)
    second = [r for r in before.values() if r["status"] == "running"]
    print(
        "driver killed with the second trial at iteration "
        f"{second[0]['iteration'] if second else None}; the resumed study reported again after "
        f"{continued - started:.0f} s and finished after {time.time() - started:.0f} s"
    )
    after = {r["trial_id"]: r for r in records(out)}
    print(
        "after the resume: "
        + ", ".join(
            f"{r['status']} at {iterations(r)}, {r.get('restarts')} restarts"
            for r in after.values()
        )
    )
    assert len(after) == 2 and all(
        r["status"] in ("completed", "early_stopped") for r in after.values()
    )
    for trial_id, record in before.items():
        if record["status"] == "completed":
            assert after[trial_id]["history"] == record["history"]
    for (
        record
    ) in after.values():  # an ASHA stop ends the history early; nothing is repeated or skipped
        assert iterations(record) == [4, 8, 12][: len(record["history"])] and record["history"]
