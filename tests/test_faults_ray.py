"""Faults a cluster study meets, each with a bound and a message (issue 14, item 5), on a real Ray
instance started here: resources no node offers, and a worker group that cannot start. (A study
beside a second Ray instance on the machine: tests/test_study_ray.py and test_reservations_ray.py.)

The head is started with `ray start --block --temp-dir` in its own session and stopped by killing
that session, so no other Ray instance on the machine is touched and Ray's default
/tmp/ray/ray_current_cluster is never written."""

import subprocess
import sys
import textwrap
import time

import pytest

from tests.study_helpers import RAY_ENV as ENV
from tests.study_helpers import Head, random_teacher_options, records, smoke_argv

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def head():
    started = Head(num_cpus=2)
    yield started.address
    started.stop()


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teacher_options(tmp_path_factory.mktemp("teachers"))


def test_a_trial_asking_more_gpus_than_any_node_offers_is_refused_before_the_search(
    head, teachers, tmp_path
):
    argv = smoke_argv(head, tmp_path / "out", teachers, "--gpus-per-trial", "1")
    started = time.time()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=180, env=ENV)
    print(f"impossible resources refused after {time.time() - started:.1f} s")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--gpus-per-trial" in done.stderr and "no node of this cluster" in done.stderr
    assert records(tmp_path / "out") == []  # no trial ever started
    assert not (
        tmp_path / "out"
    ).exists()  # nothing written: the corrected command needs no --resume


HOLDER = textwrap.dedent("""
    import sys, time, ray
    ray.init(address=sys.argv[1], log_to_driver=False)
    @ray.remote(num_cpus=1)
    class Holder:
        def ping(self):
            return True
    holder = Holder.remote()
    ray.get(holder.ping.remote())
    print("holding", flush=True)
    time.sleep(3600)
""")


def test_a_worker_group_that_cannot_start_fails_its_trial_and_the_study_goes_on(
    head, teachers, tmp_path
):
    # Another job holds 1 of the head's 2 CPUs: a 2-worker trial can never start.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, head], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        argv = smoke_argv(
            head,
            tmp_path / "out",
            teachers,
            "--num-samples",
            "2",
            "--workers-per-trial",
            "2",
            "--max-concurrent-trials",
            "1",
            "--worker-start-timeout",
            "3",
            "--worker-start-retries",
            "1",
        )
        started = time.time()
        done = subprocess.run(argv, capture_output=True, text=True, timeout=400, env=ENV)
        print(f"study with 2 unstartable trials ended after {time.time() - started:.1f} s")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = records(tmp_path / "out")
    assert len(trials) == 2
    for record in trials:
        assert record["status"] == "failed"
        assert "worker group startup timed out" in record["error"], (
            record
        )  # the reason, in the record
    assert (tmp_path / "out" / "REPORT.md").exists()
