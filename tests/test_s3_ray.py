"""A study whose Ray storage is s3:// on a local S3 server (moto in server mode on 127.0.0.1):
teachers trained once and uploaded, fetched by the trial workers, checkpoints on S3, the driver
killed mid-study and resumed, and the report of the result. The endpoint reaches Ray, pyarrow and
boto3 through the standard AWS_* variables, as a user of an S3-compatible store would set them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.study_helpers import CLI, REPO, free_port, records, start_driver, wait_for

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BUCKET = "mgd-test"


@pytest.fixture
def s3_env():
    port = free_port("127.0.0.1")
    server = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "moto_server"),
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.pop("RAY_ADDRESS", None)
    client = None
    for _ in range(50):
        try:
            client = boto3.client(
                "s3",
                endpoint_url=env["AWS_ENDPOINT_URL"],
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                region_name="us-east-1",
            )
            client.create_bucket(Bucket=BUCKET)
            break
        except Exception:
            time.sleep(0.2)
    yield env, client
    server.terminate()
    server.wait(timeout=30)


def keys(client, prefix):
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def test_a_study_on_s3_storage_survives_a_killed_driver_and_reports(s3_env, tmp_path):
    env, client = s3_env
    out = tmp_path / "study"
    argv = CLI + [
        "--smoke",
        "--no-ablation",
        "--num-samples",
        "2",
        "--max-concurrent-trials",
        "1",
        "--storage-path",
        f"s3://{BUCKET}/studies",
        "--output-dir",
        str(out),
    ]
    log = tmp_path / "driver.log"
    driver = start_driver(argv, log, env)
    # The bound only catches a study that never gets there (about 4 minutes on 2 cores).
    wait_for(
        lambda: any(r["status"] == "completed" for r in records(out)),
        1200,
        "a search trial to complete",
        driver,
        log,
        step=2,
    )
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray instance it started die at once
    driver.wait()
    finished = {r["trial_id"]: r for r in records(out) if r["status"] == "completed"}
    assert finished, log.read_text()[-3000:]
    teachers = [k for k in keys(client, "studies/teachers/") if k.endswith(".pt")]
    assert len(teachers) == 2, teachers  # trained once, kept on S3 for the trials to fetch
    assert not os.path.exists(out / "ray")  # nothing of Ray's storage landed locally
    # The protocol's teacher targets were written to S3 and the trials read them there.
    store = json.loads((out / "targets.json").read_text())["1/8"]["store"]
    assert store.startswith(f"s3://{BUCKET}/studies/targets/"), store
    assert keys(client, "studies/targets/")
    # The search's Tune run did not finish: its finished trials' checkpoints are still on S3.
    assert any(
        "/train-" in k and "/checkpoint_" in k for k in keys(client, f"studies/{out.name}/")
    )

    resumed = subprocess.run(
        argv + ["--resume"], capture_output=True, text=True, timeout=600, env=env
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert (
        resumed.stdout.count("cached at s3://") == 2
    )  # the teachers were fetched, not trained again
    after = {r["trial_id"]: r for r in records(out)}
    assert len(after) == 2 and all(
        r["status"] in ("completed", "early_stopped") for r in after.values()
    )
    for trial_id, record in finished.items():
        assert after[trial_id]["history"] == record["history"]
    study_keys = keys(client, f"studies/{out.name}/")
    assert any(
        "/search-1_8/" in k for k in study_keys
    )  # Tune's experiment state, restored from S3
    # Once the search finished, its best student was exported and the trials' Train folders were
    # deleted from S3 (no --keep-trial-weights).
    assert (out / "models" / "1_8" / "best_student.pt").exists()
    assert not any("/train-" in k and "/checkpoint_" in k for k in study_keys), study_keys
    # The resumed study finished the store the killed one had written, then deleted it.
    assert json.loads((out / "targets.json").read_text())["1/8"]["deleted"] is True
    # Nothing of it is left but the empty "targets/" folder marker that holds every store.
    assert [k for k in keys(client, "studies/targets/") if not k.endswith("/")] == []

    report = subprocess.run(
        [sys.executable, "-m", "mgd_ray.report", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (out / "REPORT.md").exists()
