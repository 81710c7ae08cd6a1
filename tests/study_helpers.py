"""What the study tests share: the CLI (as a module and as a command line), the trial records a
study left, random teachers, Ray heads of their own, and waiting on a condition with a bound."""

import glob
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import ray
import torch

from mgd_ray.config import TEACHER_DEEP, TEACHER_WIDE
from mgd_ray.data import NUM_CLASSES
from mgd_ray.distributed.cluster import free_port  # noqa: F401 -- the tests' port finder
from mgd_ray.models import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The study's command line, run as a process of its own.
CLI = [sys.executable, os.path.join(REPO, "experiments", "tune_loss_weights.py")]
_spec = importlib.util.spec_from_file_location("tune_loss_weights", CLI[1])
tune_loss_weights = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tune_loss_weights)


def run_cli(argv, capsys):
    """(exit code, stderr) of experiments/tune_loss_weights.py run in this process."""
    code = tune_loss_weights.main(tune_loss_weights.get_args_parser().parse_args(argv))
    return code, capsys.readouterr().err


def trial_spec(seed=0, iterations=10):
    """A TrialSpec of the synthetic set (teacher files need not exist: nothing trains)."""
    from mgd_ray.config import DistillConfig
    from mgd_ray.distributed.spec import TrainRun, TrialSpec

    return TrialSpec(
        DistillConfig(seed=seed, iterations=iterations, eval_every=min(5, iterations)),
        TrainRun(storage_path="/tmp/no-such-storage"),
    )


def search_config(point, seed=0):
    """The Tune config of a search trial at `point` (flat, by POINT_KEYS)."""
    return {"run": trial_spec(seed=seed).to_tune(), **point}


def records(results_dir):
    """Every trial record of a results folder, in file-name order."""
    out = []
    for path in sorted(glob.glob(os.path.join(results_dir, "trials", "*", "*.json"))):
        with open(path) as f:
            out.append(json.load(f))
    return out


def random_teacher_files(folder) -> dict[str, str]:
    """{"deep": path, "wide": path}: untrained synthetic teachers, saved in `folder` (no time spent
    training them; the tests are about the study, not the teachers)."""
    out = {}
    for role, arch in (("deep", TEACHER_DEEP), ("wide", TEACHER_WIDE)):
        out[role] = str(folder / f"{arch}.pt")
        torch.save(build_model(arch, NUM_CLASSES["synthetic"]).state_dict(), out[role])
    return out


def random_teacher_options(folder) -> list[str]:
    """The CLI's --teacher-deep-checkpoint and --teacher-wide-checkpoint options, naming
    random_teacher_files(folder)."""
    files = random_teacher_files(folder)
    return [x for role, path in files.items() for x in (f"--teacher-{role}-checkpoint", path)]


def smoke_argv(address: str, out, teachers: list[str], *options: str) -> list[str]:
    """The command line of a --smoke study without ablation on the CPUs of the cluster at
    `address`, writing to `out`, with the teacher options `teachers` (random_teacher_options), then
    `options`. --gpus-per-trial 0: cluster-local.yaml's GPU node types are logical (no CUDA), and
    without the option a cluster whose node types have GPUs trains on them."""
    return CLI + [
        "--smoke",
        "--no-ablation",
        "--gpus-per-trial",
        "0",
        "--address",
        address,
        "--output-dir",
        str(out),
        *teachers,
        *options,
    ]


def start_driver(argv: list[str], log, env: dict[str, str] | None = None) -> subprocess.Popen:
    """The study command `argv` started in a session of its own (os.killpg ends it with every Ray
    process it started), its output written to the file `log`."""
    return subprocess.Popen(
        argv, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def alive_nodes(address: str, env: dict[str, str]) -> dict[str, dict]:
    """{node id: resources} of the live nodes of the cluster at `address`, asked by a separate
    client process (the test process itself never joins a Ray cluster)."""
    code = (
        "import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print('NODES', json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() if "
        "n['Alive']}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, address], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Ray may print to stdout too (e.g. a just-killed node's "lagging heartbeats" notice), after
    # the line
    [line] = [line for line in done.stdout.splitlines() if line.startswith("NODES ")]
    return json.loads(line.removeprefix("NODES "))


RAY = os.path.join(os.path.dirname(sys.executable), "ray")
# The environment of every Ray process the tests start: this checkout importable, no inherited
# cluster address. Ray 2.60 turns token auth on for every new cluster (generating
# ~/.ray/auth_token when missing); clients that do not say so explicitly (`ray status`) would then
# be refused.
RAY_ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
RAY_ENV.pop("RAY_ADDRESS", None)
RAY_ENV.setdefault("RAY_AUTH_MODE", "token")


class Head:
    """A `ray start --head --block` of the tests' own, in a new session and a short temp dir, so
    that stopping it (killing that session) touches no other Ray instance on the machine and
    Ray's default /tmp/ray/ray_current_cluster is never written."""

    def __init__(self, num_cpus: int, dashboard: bool = False, token_auth: bool = True) -> None:
        # Without token auth, this process itself can join the head (its Ray read RAY_AUTH_MODE
        # when it was imported).
        env = {**RAY_ENV, "RAY_AUTH_MODE": "token" if token_auth else "disabled"}
        self.temp_dir = tempfile.mkdtemp(prefix="mgdr-", dir="/tmp")
        port = free_port()
        self.address = f"{ray.util.get_node_ip_address()}:{port}"
        self.process = subprocess.Popen(
            [
                RAY,
                "start",
                "--head",
                "--block",
                f"--port={port}",
                f"--num-cpus={num_cpus}",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                f"--include-dashboard={'true' if dashboard else 'false'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = subprocess.run(
                [RAY, "status", f"--address={self.address}"], capture_output=True, env=env
            )
            if probe.returncode == 0:
                return
            time.sleep(2)
        self.stop()
        raise RuntimeError("ray start --head did not come up in 90 s")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            # `ray start --block` takes up to 30 s to stop its processes one by one: they go with
            # the session
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        time.sleep(1)
        for pid in subprocess.run(
            ["pgrep", "-s", str(self.process.pid)], capture_output=True, text=True
        ).stdout.split():
            os.kill(int(pid), signal.SIGKILL)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def wait_for(condition, timeout, what, driver=None, log=None, step=1.0):
    """Poll `condition()` until it returns something true and return that; fail, saying `what`
    was awaited, after `timeout` s or as soon as the `driver` process has ended (with its log)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        if driver is not None and driver.poll() is not None:
            pytest.fail(
                f"the study ended ({driver.returncode}) while waiting for {what}:\n"
                f"{log.read_text()[-3000:] if log else ''}"
            )
        time.sleep(step)
    pytest.fail(f"waited {timeout} s for {what}:\n{log.read_text()[-3000:] if log else ''}")


def cluster_is_idle(timeout=60):
    """Wait until the connected cluster has every CPU free again: a Ray test starts from an idle
    cluster whatever the test before it left running (it fails, saying so, after `timeout` s)."""
    total = ray.cluster_resources().get("CPU", 0)
    wait_for(
        lambda: ray.available_resources().get("CPU", 0) >= total,
        timeout,
        f"all {total:g} CPUs of the cluster to be free",
        step=0.5,
    )
