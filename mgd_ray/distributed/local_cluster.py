"""A multi-node Ray cluster on one machine, autoscaled by Ray's own autoscaler (fake_multinode
provider), for rehearsing a cluster study before paying for GPUs.

    python -m mgd_ray.distributed.local_cluster up [--config cluster-local.yaml] [--port 6390]
    python -m mgd_ray.distributed.local_cluster status
    python -m mgd_ray.distributed.local_cluster kill-node NODE_ID   # rehearse losing a machine
    python -m mgd_ray.distributed.local_cluster down

`up` starts `RAY_FAKE_CLUSTER=1 ray start --head --block --autoscaling-config=...` in the
background and returns once the head answers; worker nodes of cluster-local.yaml's types start
when trials wait for them and stop when idle. `down` ends that head and every process under it
(the fake worker nodes are its descendants) by process id, touching no other Ray instance.
`kill-node` kills every process of one worker node at once (SIGKILL: its raylet, object store,
agents and the Train workers on it), as when a machine disappears. The dashboard and job API listen
on http://127.0.0.1:DASHBOARD_PORT (loopback only, as on cluster.yaml's head). The state (head pid,
address, dashboard, temp dir) is kept in a small JSON file, ~/.mgd-ray-local-cluster.json
by default.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from .cluster import AUTOSCALING_CONFIG_ENV
from .local_provider import MODULE as LOCAL_PROVIDER

REPO_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "cluster-local.yaml",
)
DEFAULT_STATE = os.path.expanduser("~/.mgd-ray-local-cluster.json")
DEFAULT_PORT = 6390
DEFAULT_DASHBOARD_PORT = 8265
# how the fake provider names each node's processes
NODE_ID_ENV = "RAY_OVERRIDE_NODE_ID_FOR_TESTING"
# the fake provider's head
FAKE_HEAD_NODE_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"


def descendants(pid: int) -> list[int]:
    """Process ids under `pid`, children first (Linux /proc; the fake nodes are all under the
    head)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        out.append(child)
        todo += children.get(child, [])
    return out


def process_env(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            items = f.read().split(b"\0")
    except OSError:
        return {}
    return dict(item.decode(errors="replace").split("=", 1) for item in items if b"=" in item)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _ray_cli() -> str:
    return (
        shutil.which("ray", path=os.path.dirname(sys.executable)) or shutil.which("ray") or "ray"
    )


def _ip() -> str:
    import ray.util

    return ray.util.get_node_ip_address()


def autoscaling_config(config_path: str, address: str, idle_timeout_minutes: float | None) -> dict:
    with open(config_path) as f:
        config = yaml.safe_load(f)
    if not isinstance(config, dict) or config.get("provider", {}).get("type") != "fake_multinode":
        raise ValueError(
            f"--config {config_path}: expected an autoscaler config with provider type "
            "fake_multinode"
        )
    config["provider"]["gcs_address"] = address  # where the fake nodes join (default: port 6379)
    # fake_multinode plus a lost node reported terminated, so that the autoscaler replaces it.
    config["provider"].update(type="external", module=LOCAL_PROVIDER)
    if idle_timeout_minutes is not None:
        config["idle_timeout_minutes"] = idle_timeout_minutes
    return config


def up(
    config_path: str = REPO_CONFIG,
    port: int = DEFAULT_PORT,
    state_path: str = DEFAULT_STATE,
    temp_dir: str | None = None,
    idle_timeout_minutes: float | None = None,
    timeout_s: float = 120,
    env: dict | None = None,
    dashboard_port: int = DEFAULT_DASHBOARD_PORT,
) -> dict:
    """Start the head; return the state {pid, address, dashboard, temp_dir, config}."""
    if os.path.exists(state_path):
        with open(state_path) as f:
            old = json.load(f)
        if _alive(old["pid"]):
            raise RuntimeError(
                f"a local cluster is already up at {old['address']} (pid {old['pid']}, "
                f"state {state_path}): run `down` first"
            )
    address = f"{_ip()}:{port}"
    config = autoscaling_config(config_path, address, idle_timeout_minutes)
    # Short: Ray's socket paths under it must stay below the 107-character limit.
    temp_dir = temp_dir or tempfile.mkdtemp(prefix="mgdc-", dir="/tmp")
    config_file = os.path.join(temp_dir, "autoscaling.yaml")
    with open(config_file, "w") as f:
        yaml.safe_dump(config, f)
    head = config["available_node_types"][config["head_node_type"]]["resources"]
    command = [
        _ray_cli(),
        "start",
        "--head",
        "--block",
        f"--port={port}",
        f"--temp-dir={temp_dir}",
        f"--autoscaling-config={config_file}",
        f"--num-cpus={int(head.get('CPU', 0))}",
        f"--num-gpus={int(head.get('GPU', 0))}",
        "--object-store-memory=200000000",
        f"--dashboard-port={dashboard_port}",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
    ]
    # Token auth as Ray 2.60 sets it up for any new cluster (a token in ~/.ray/auth_token,
    # generated when missing), but said explicitly, so that `ray status` and other clients send the
    # token.
    process_env = {
        "RAY_AUTH_MODE": "token",
        **os.environ,
        **(env or {}),
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        NODE_ID_ENV: FAKE_HEAD_NODE_ID,
    }
    process_env.pop("RAY_ADDRESS", None)
    log = open(os.path.join(temp_dir, "head.log"), "w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=process_env, start_new_session=True
    )
    state = {
        "pid": process.pid,
        "address": address,
        "dashboard": f"http://127.0.0.1:{dashboard_port}",
        "temp_dir": temp_dir,
        "config": config_file,
    }
    with open(state_path, "w") as f:
        json.dump(state, f)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if process.poll() is not None:
            down(state_path)
            raise RuntimeError(
                f"ray start --head exited ({process.returncode}); see {temp_dir}/head.log"
            )
        probe = subprocess.run(
            [_ray_cli(), "status", f"--address={address}"], capture_output=True, env=process_env
        )
        if probe.returncode == 0:
            return state
        time.sleep(2)
    down(state_path)
    raise TimeoutError(
        f"the local head did not answer within {timeout_s:g} s; see {temp_dir}/head.log"
    )


def down(state_path: str = DEFAULT_STATE, keep_temp_dir: bool = False) -> bool:
    """Stop the head started by `up` and every process under it; False when none was up."""
    if not os.path.exists(state_path):
        return False
    with open(state_path) as f:
        state = json.load(f)
    pids = descendants(state["pid"]) + [state["pid"]]
    _signal_all(pids, signal.SIGTERM)  # raylets and GCS first get the chance to shut down cleanly
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    _signal_all([p for p in pids if _alive(p)], signal.SIGKILL)
    os.remove(state_path)
    if not keep_temp_dir:
        shutil.rmtree(state["temp_dir"], ignore_errors=True)
    return True


def kill_node(node_id: str, state_path: str = DEFAULT_STATE) -> list[int]:
    """SIGKILL every process of one fake worker node (found by the node id in its environment);
    return their ids. The head cannot be killed this way: `down` stops it."""
    if node_id == FAKE_HEAD_NODE_ID:
        raise ValueError(f"{node_id} is the head node: use `down` to stop the cluster")
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"no local cluster recorded in {state_path}: run `up` first")
    with open(state_path) as f:
        state = json.load(f)
    # The raylet and the node's own processes carry the node id; its workers and agents are their
    # children.
    pids = [p for p in descendants(state["pid"]) if process_env(p).get(NODE_ID_ENV) == node_id]
    pids = sorted({q for p in pids for q in [p, *descendants(p)]})
    if not pids:
        raise ValueError(
            f"no process of node {node_id} under the local cluster's head (pid {state['pid']})"
        )
    _signal_all(pids, signal.SIGKILL)
    return pids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("action", choices=["up", "down", "status", "kill-node"])
    p.add_argument(
        "node_id",
        nargs="?",
        help="kill-node: the worker node to kill (as `ray status -v` or a trial record's `nodes` "
        "name it)",
    )
    p.add_argument(
        "--config",
        default=REPO_CONFIG,
        help="fake_multinode autoscaler config (default: %(default)s)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="GCS port of the head (default: %(default)s)",
    )
    p.add_argument(
        "--state", default=DEFAULT_STATE, help="where up records the head (default: %(default)s)"
    )
    p.add_argument(
        "--dashboard-port",
        type=int,
        default=DEFAULT_DASHBOARD_PORT,
        help="dashboard and job API port, on 127.0.0.1 (default: %(default)s)",
    )
    p.add_argument(
        "--idle-timeout-minutes", type=float, default=None, help="override the config's"
    )
    args = p.parse_args(argv)
    if args.action == "up":
        state = up(
            args.config,
            args.port,
            args.state,
            idle_timeout_minutes=args.idle_timeout_minutes,
            dashboard_port=args.dashboard_port,
        )
        print(
            f"local cluster up: --address {state['address']} (head pid {state['pid']}, logs in "
            f"{state['temp_dir']})"
        )
        print(
            f"dashboard and job API: {state['dashboard']} (clients need RAY_AUTH_MODE=token and "
            "the token)"
        )
        print(f"for the study's resource check: export {AUTOSCALING_CONFIG_ENV}={state['config']}")
        print(
            "worker nodes start when trials wait for them; `python -m "
            "mgd_ray.distributed.local_cluster down` stops all"
        )
        return 0
    if args.action == "down":
        print(
            "local cluster stopped"
            if down(args.state)
            else f"no local cluster recorded in {args.state}"
        )
        return 0
    if args.action == "kill-node":
        if not args.node_id:
            p.error("kill-node: expected the node id of a worker node")
        print(
            f"killed {len(kill_node(args.node_id, args.state))} processes of node {args.node_id}"
        )
        return 0
    if not os.path.exists(args.state):
        print(f"no local cluster recorded in {args.state}")
        return 1
    with open(args.state) as f:
        state = json.load(f)
    return subprocess.run(
        [_ray_cli(), "status", f"--address={state['address']}"],
        env={"RAY_AUTH_MODE": "token", **os.environ},
    ).returncode


if __name__ == "__main__":
    sys.exit(main())
