"""The README's job-submission flow against a head started with token authentication
(RAY_AUTH_MODE=token): `ray job submit` of a smoke study succeeds with the token, and a client
without it is refused."""
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import shutil
import time

import pytest
import ray
import torch

from mgd_ray.data import NUM_CLASSES
from mgd_ray.models import build_model

pytestmark = pytest.mark.ray
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def free_port():
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def client_env(token=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["HOME"] = tempfile.mkdtemp(prefix="mgd-home-")  # no ~/.ray/auth_token to fall back on
    if token:
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    return env


@pytest.fixture
def token_head():
    token = secrets.token_hex(16)
    temp_dir = tempfile.mkdtemp(prefix="mgdt-", dir="/tmp")
    port, dashboard = free_port(), free_port()
    env = client_env(token)
    head = subprocess.Popen([RAY, "start", "--head", "--block", f"--port={port}", "--num-cpus=2",
                             f"--dashboard-port={dashboard}", "--include-dashboard=true", f"--temp-dir={temp_dir}",
                             "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True)
    url = f"http://{ray.util.get_node_ip_address()}:{dashboard}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if subprocess.run([RAY, "job", "list", "--address", url], capture_output=True, env=env).returncode == 0:
            break
        time.sleep(2)
    else:
        pytest.fail("token-auth head did not come up")
    yield url, token
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_job_submission_needs_the_token(token_head, tmp_path):
    url, token = token_head
    refused = subprocess.run([RAY, "job", "list", "--address", url], capture_output=True, text=True,
                             env=client_env(), timeout=120)
    assert refused.returncode != 0
    assert "401" in refused.stderr + refused.stdout or "nauthorized" in refused.stderr + refused.stdout

    teachers = []
    for option, arch in (("--teacher-deep-checkpoint", "deeplabv3plus_resnet101"),
                         ("--teacher-wide-checkpoint", "deeplabv3plus_wide_resnet50_2")):
        path = str(tmp_path / f"{arch}.pt")
        torch.save(build_model(arch, NUM_CLASSES["synthetic"]).state_dict(), path)
        teachers += [option, path]
    out = tmp_path / "study"
    entrypoint = " ".join([sys.executable, os.path.join(REPO, "experiments", "tune_loss_weights.py"), "--smoke",
                           "--no-ablation", "--num-samples", "1", "--output-dir", str(out), "--quiet", *teachers])
    started = time.time()
    submitted = subprocess.run([RAY, "job", "submit", "--address", url,
                                "--runtime-env-json", f'{{"env_vars": {{"PYTHONPATH": "{REPO}"}}}}',
                                "--", *entrypoint.split()], capture_output=True, text=True,
                               env=client_env(token), timeout=540)
    print(f"token-auth job submission of a smoke study: {time.time() - started:.0f} s")
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout.lower()
    assert (out / "REPORT.md").exists()
