"""Connecting the study to its Ray cluster so that no wait is endless.

- Every process the study starts (trial actors, Ray Train controllers, their placement-group
  cleaners) gets RAY_ADDRESS = the cluster the driver connected to, through the job's runtime env.
  Ray Train's PlacementGroupCleaner looks its controller up through the State API with no address:
  without RAY_ADDRESS it scans the machine, and with a second Ray instance there it picks the wrong
  one or dies ("Found multiple active Ray instances").
- A Train worker group that cannot start within `worker_start_timeout_s` is retried
  `worker_start_retries` times (Ray Train's controller_failure_limit, unbounded by default), then
  the trial fails with WorkerGroupStartupTimeoutError in its record and the study goes on.
- A trial that asks for more per Train worker than any node (running, or a type the autoscaler can
  start) offers is refused before the search starts, naming the option.
- Every trial gives back what its Train run reserved, however it ends, and a trial whose workers
  wait for resources is said to wait, and for what (reservations.py).
- How many trials run at once is what the cluster can hold now (`trial_slots`), asked before each
  phase: a shared cluster has fewer slots than its totals.
"""

from __future__ import annotations

import math
import os
import socket
from typing import Any

import ray
import yaml

from . import ray_private
from .memory import accelerator_of_instance

# read by Ray Train V2's controller
WORKER_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # read by a local Ray start for its GCS port
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # written on the head by `ray up`
# names another autoscaler config (local_cluster)
AUTOSCALING_CONFIG_ENV = "MGD_RAY_AUTOSCALING_CONFIG"


class UnmeetableResources(ValueError):
    """A trial asks for resources no node of the cluster can ever offer."""


def study_env(address: str, worker_start_timeout_s: float) -> dict[str, str]:
    """Environment every process of the study runs with."""
    return {"RAY_ADDRESS": address, WORKER_START_TIMEOUT_ENV: f"{float(worker_start_timeout_s):g}"}


def free_port(host: str = "") -> int:
    """A TCP port free on `host` now ("" = every interface, as a Ray head binds)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def connect(address: str | None, worker_start_timeout_s: float, **init_kwargs: Any) -> str:
    """ray.init for the study; return the GCS address it is connected to.

    address: as ray.init's ("auto", "host:port"); None connects where ray.init() would
    (RAY_ADDRESS, the last `ray start` cluster) or starts a local instance, on a GCS port chosen
    here so that its address is known before it starts.
    When Ray is already initialised (a notebook, a test) the caller's runtime env is kept and only
    the driver's own environment is set."""
    if ray.is_initialized():
        gcs = ray.get_runtime_context().gcs_address
        os.environ.update(study_env(gcs, worker_start_timeout_s))
        return gcs
    if address is None and ray_private.local_address() is None:
        # ray.init() would start a new local instance (no RAY_ADDRESS, no `ray start` cluster
        # here).
        port = free_port()
        gcs = f"{ray.util.get_node_ip_address()}:{port}"
        previous = os.environ.get(GCS_PORT_ENV)
        os.environ[GCS_PORT_ENV] = str(port)
        try:
            ray.init(
                runtime_env={"env_vars": study_env(gcs, worker_start_timeout_s)}, **init_kwargs
            )
        finally:
            if previous is None:
                os.environ.pop(GCS_PORT_ENV, None)
            else:
                os.environ[GCS_PORT_ENV] = previous
    else:
        # "auto" and the like resolve to one cluster here; every later lookup names that one.
        ray.init(address=address, **init_kwargs)
        gcs = ray.get_runtime_context().gcs_address
        ray.shutdown()
        ray.init(
            address=gcs,
            runtime_env={"env_vars": study_env(gcs, worker_start_timeout_s)},
            **init_kwargs,
        )
    actual = ray.get_runtime_context().gcs_address
    if actual != gcs:
        raise RuntimeError(
            f"Ray started at {actual}, not at the expected {gcs}: set --address explicitly"
        )
    os.environ.update(study_env(gcs, worker_start_timeout_s))
    return gcs


def node_shapes() -> list[tuple[str, dict[str, float], float]]:
    """(name, resources of one node, how many such nodes there can be) for every live node and
    every node type the autoscaler may start (max_count -1 = unbounded: math.inf). Node types come
    from the cluster config the autoscaler (v2) publishes in the GCS, else from the config `ray up`
    leaves on the head (~/ray_bootstrap_config.yaml, autoscaler v1) or the file named by
    MGD_RAY_AUTOSCALING_CONFIG."""
    shapes = [
        (f"node {n['NodeManagerAddress']} ({n['NodeID'][:8]})", dict(n["Resources"]), 1.0)
        for n in ray.nodes()
        if n.get("Alive")
    ]
    config = ray_private.cluster_config()
    if config is not None:
        for group in config.node_group_configs:
            if group.max_count != 0:
                count = math.inf if group.max_count < 0 else float(group.max_count)
                shapes.append((f"node type {group.name}", dict(group.resources), count))
        return shapes
    for name, node_type in bootstrap_node_types().items():
        count = float(node_type.get("max_workers", 0))
        if count:
            shapes.append((f"node type {name}", dict(node_type.get("resources", {})), count))
    return shapes


def bootstrap_node_types() -> dict[str, dict[str, Any]]:
    """The `available_node_types` of the config `ray up` leaves on the head (or the file named by
    MGD_RAY_AUTOSCALING_CONFIG); {} without one."""
    bootstrap = os.path.expanduser(os.environ.get(AUTOSCALING_CONFIG_ENV) or BOOTSTRAP_CONFIG)
    if not os.path.exists(bootstrap):
        return {}
    with open(bootstrap) as f:
        return (yaml.safe_load(f) or {}).get("available_node_types", {}) or {}


def cluster_accelerators(shapes: list[tuple[str, dict[str, float], float]]) -> set[str]:
    """The GPU types of a cluster: the "accelerator_type:<name>" resources Ray gives GPU nodes
    (live ones, and node types that declare it), and the GPUs of the AWS instance types that
    `ray up` node types with GPUs name."""
    found = {
        key.split(":", 1)[1]
        for _, resources, _ in shapes
        for key in resources
        if key.startswith("accelerator_type:")
    }
    for node_type in bootstrap_node_types().values():
        if node_type.get("resources", {}).get("GPU", 1):
            instance = (node_type.get("node_config") or {}).get("InstanceType", "")
            found.add(accelerator_of_instance(instance) or "")
    return found - {""}


def cluster_gpus(shapes: list[tuple[str, dict[str, float], float]]) -> int:
    """GPUs a cluster of `shapes` (node_shapes) has or can start: its live nodes' total, or its
    node types' at their maximum counts (an unbounded type counts one node), whichever is more."""
    live = sum(r.get("GPU", 0) for name, r, _ in shapes if not name.startswith("node type "))
    types = sum(
        r.get("GPU", 0) * (1 if math.isinf(count) else count)
        for name, r, count in shapes
        if name.startswith("node type ")
    )
    return int(max(live, types))


def workers_per_node(node: dict[str, float], per_worker: dict[str, float]) -> float:
    """How many Train workers asking for `per_worker` fit on one node with `node` resources."""
    fits = [node.get(k, 0.0) // v for k, v in per_worker.items() if v > 0]
    return min(fits) if fits else math.inf


def check_trial_fits(
    scaling: dict[str, int], shapes: list[tuple[str, dict[str, float], float]]
) -> None:
    """Raise UnmeetableResources (naming the option) when no node can ever host one Train worker of
    a trial, or none can host all of a trial's workers (scaling_config packs them on one node).
    `scaling`: TrainRun.scaling()."""
    per_worker = {
        "CPU": float(scaling["cpus_per_worker"]),
        "GPU": float(scaling["gpus_per_worker"]),
    }
    offered = "; ".join(
        f"{name}: {int(r.get('CPU', 0))} CPU, {int(r.get('GPU', 0))} GPU" for name, r, _ in shapes
    )
    if not any(workers_per_node(r, per_worker) >= 1 for _, r, _ in shapes):
        option = (
            f"--gpus-per-trial / --workers-per-trial ({per_worker['GPU']:g} GPU per worker)"
            if per_worker["GPU"]
            and not any(r.get("GPU", 0) >= per_worker["GPU"] for _, r, _ in shapes)
            else f"--cpus-per-worker={scaling['cpus_per_worker']}"
        )
        raise UnmeetableResources(
            f"{option}: no node of this cluster, running or that the autoscaler can start, "
            f"offers that much to one Train worker ({offered or 'no nodes'})"
        )
    most = max(workers_per_node(r, per_worker) for _, r, _ in shapes)
    if most < scaling["workers"]:
        raise UnmeetableResources(
            f"--workers-per-trial={scaling['workers']}: no node of this cluster, running or that "
            f"the autoscaler can start, hosts {scaling['workers']} Train workers of "
            f"{per_worker['CPU']:g} CPU, {per_worker['GPU']:g} GPU (a trial's workers are packed "
            f"on one node; at most {most:g} fit one: {offered})"
        )


def free_resources_per_node() -> list[dict[str, float]]:
    """What each live node has free now (other jobs' and this study's holdings taken out)."""
    return [dict(free) for free in ray_private.free_resources_per_node().values()]


def trial_slots(
    scaling: dict[str, float],
    shapes: list[tuple[str, dict[str, float], float]],
    free: list[dict[str, float]],
) -> int:
    """How many trials of `scaling` (TrainRun.scaling()) can run at once, each with all its Train
    workers on one node (scaling_config packs them): those that fit in what the live nodes have
    free now, or, on an autoscaling cluster, on the node types it
    may start at their maximum counts, whichever is more; at least 1 (an autoscaler starting from
    zero GPU nodes scales up for the one trial that waits). CPU-only trials count no GPU node type:
    Ray's autoscaler keeps GPU nodes for GPU work. Asked before every phase: on a shared cluster,
    another job's holdings are not this study's slots."""
    per_worker = {
        "CPU": float(scaling["cpus_per_worker"]),
        "GPU": float(scaling["gpus_per_worker"]),
    }
    workers = scaling["workers"]
    on_free = sum(workers_per_node(node, per_worker) // workers for node in free)
    on_types = sum(
        workers_per_node(resources, per_worker) // workers * count
        for name, resources, count in shapes
        if name.startswith("node type ") and (per_worker["GPU"] or not resources.get("GPU"))
    )
    trials = max(on_free, on_types)
    if math.isinf(trials):
        return 1_000_000  # an unbounded autoscaler: Tune's own limit (num_samples) applies
    return max(1, int(trials))


def connected_gpus(address: str) -> int:
    """GPUs of the cluster at `address` (connecting to it first): cluster_gpus of its node
    shapes."""
    if not ray.is_initialized():
        ray.init(address=address)
    return cluster_gpus(node_shapes())


def connected_accelerators(address: str) -> set[str]:
    """The GPU types of the cluster at `address` (connecting to it first):
    cluster_accelerators of its node shapes."""
    if not ray.is_initialized():
        ray.init(address=address)
    return cluster_accelerators(node_shapes())
