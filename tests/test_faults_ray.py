"""Faults a cluster study meets, each with a bound and a message (issue 14, item 5), on real Ray
instances started here: resources no node offers, a worker group that cannot start, and a second
Ray instance on the machine beside a study with a diverging trial and DDP trials.

The head is started with `ray start --block --temp-dir` in its own session and stopped by killing
that session, so no other Ray instance on the machine is touched and Ray's default
/tmp/ray/ray_current_cluster is never written."""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
import ray

from tests.study_helpers import free_port, random_teacher_files, records

pytestmark = pytest.mark.ray
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = [sys.executable, os.path.join(REPO, "experiments", "tune_loss_weights.py")]
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
ENV.pop("RAY_ADDRESS", None)
# Ray 2.60 turns token auth on for every new cluster (generating ~/.ray/auth_token when missing);
# clients that do not say so explicitly (`ray status`) would then be refused.
ENV.setdefault("RAY_AUTH_MODE", "token")


def start_head(num_cpus):
    """(process, address) of a `ray start --head --block` in a new session and short temp dir."""
    temp_dir = tempfile.mkdtemp(prefix="mgdr-", dir="/tmp")
    port = free_port()
    process = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}",
                                f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    address = f"{ray.util.get_node_ip_address()}:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        probe = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, env=ENV)
        if probe.returncode == 0:
            return process, address, temp_dir
        time.sleep(2)
    stop_head(process, temp_dir)
    raise RuntimeError("ray start --head did not come up in 90 s")


def stop_head(process, temp_dir):
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    time.sleep(2)  # raylet and GCS leave with the session
    for pid in subprocess.run(["pgrep", "-s", str(process.pid)], capture_output=True, text=True).stdout.split():
        os.kill(int(pid), signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head():
    process, address, temp_dir = start_head(num_cpus=2)
    yield address
    stop_head(process, temp_dir)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    return random_teacher_files(tmp_path_factory.mktemp("teachers"))


def teacher_args(teachers):
    return [x for option, path in teachers.items() for x in (option, path)]


def test_a_trial_asking_more_gpus_than_any_node_offers_is_refused_before_the_search(head, teachers, tmp_path):
    started = time.time()
    done = subprocess.run(CLI + ["--smoke", "--no-ablation", "--address", head, "--gpus-per-trial", "1",
                                 "--output-dir", str(tmp_path / "out"), *teacher_args(teachers)],
                          capture_output=True, text=True, timeout=180, env=ENV)
    print(f"impossible resources refused after {time.time() - started:.1f} s")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "--gpus-per-trial" in done.stderr and "no node of this cluster" in done.stderr
    assert records(tmp_path / "out") == []  # no trial ever started
    assert not (tmp_path / "out").exists()  # nothing written: the corrected command needs no --resume


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


def test_a_worker_group_that_cannot_start_fails_its_trial_and_the_study_goes_on(head, teachers, tmp_path):
    # Another job holds 1 of the head's 2 CPUs: a 2-worker trial can never start.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, head], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "holding"
        started = time.time()
        done = subprocess.run(CLI + ["--smoke", "--no-ablation", "--address", head, "--num-samples", "2",
                                     "--workers-per-trial", "2", "--max-concurrent-trials", "1",
                                     "--worker-start-timeout", "3", "--worker-start-retries", "1",
                                     "--output-dir", str(tmp_path / "out"), *teacher_args(teachers)],
                              capture_output=True, text=True, timeout=400, env=ENV)
        print(f"study with 2 unstartable trials ended after {time.time() - started:.1f} s")
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = records(tmp_path / "out")
    assert len(trials) == 2
    for record in trials:
        assert record["status"] == "failed"
        assert "worker group startup timed out" in record["error"], record  # the reason, in the record
    assert (tmp_path / "out" / "REPORT.md").exists()


DRIVER = textwrap.dedent("""
    import sys
    from mgd_ray.distributed.study import StudyConfig, run_study
    cfg = StudyConfig(output_dir=sys.argv[1], teacher_deep_checkpoint=sys.argv[2], teacher_wide_checkpoint=sys.argv[3],
                      protocols=("1/8",), iterations=4, eval_every=1, teacher_iterations=2, crop_size=32, batch_size=2,
                      loader_workers=0, seeds=1, num_samples=4, workers_per_trial=2, max_concurrent_trials=1,
                      ablation=False, worker_start_timeout_s=60, verbose=True)
    diverging = {"w_pixel": 1.0, "lambda_semantic": 1e38, "lambda_region": 1e38, "confidence_threshold": 0.0}
    run_study(cfg, extra_points=[diverging])
""")


def test_a_study_beside_a_second_ray_instance_finishes_despite_abnormal_trial_ends(teachers, tmp_path):
    """The second instance is a `ray start` head; the study starts its own local instance."""
    other, _, other_temp = start_head(num_cpus=1)
    try:
        started = time.time()
        done = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "out"),
                               teachers["--teacher-deep-checkpoint"], teachers["--teacher-wide-checkpoint"]],
                              capture_output=True, text=True, timeout=540, env=ENV)
        print(f"study beside a second instance ended after {time.time() - started:.1f} s")
    finally:
        stop_head(other, other_temp)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-4000:]
    assert "Found multiple active Ray instances" not in log
    assert "Could not find any running Ray instance" not in log
    trials = records(tmp_path / "out")
    statuses = sorted(r["status"] for r in trials)
    assert len(trials) == 4 and statuses.count("failed") == 1, statuses
    failed = next(r for r in trials if r["status"] == "failed")
    assert "diverged at iteration" in failed["error"]
    assert failed["diverged"]["iteration"] >= 1  # the record says so as data, not only in the text
    assert set(statuses) <= {"completed", "early_stopped", "failed"}
