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
- Every trial gives back what its Train run reserved, however it ends (`release_reservations`,
  `ReservationWatch`), and a trial whose workers wait for resources is said to wait, and for what.
- How many trials run at once is what the cluster can hold now (`trial_slots`), asked before each
  phase: a shared cluster has fewer slots than its totals.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any, Callable

import ray
import yaml
from ray.tune import Callback

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


# What trials reserve, and giving it back. A trial's Ray Train run holds its workers' resources in
# a placement group that the run's controller creates. Tune ends a trial (its last report, ASHA's
# stop, a stopped study) by ending the trial's actor; the controller, which that actor owns, dies
# with it before its shutdown path has removed the group. The GCS frees a group only once its
# creator actor AND its job are dead, and the job is the study's driver: left alone, every such
# group outlives its trial until the study ends, and the study stalls once they fill the cluster.
# Ray Train's own PlacementGroupCleaner asks the state API, which needs the dashboard (and a
# machine with one Ray instance). So the study gives them back itself: a group of this job whose
# creator actor is dead has nobody left to use it.

TRAIN_CONTROLLER = "TrainController"


def release_reservations(job_id: str) -> list[ray_private.Reservation]:
    """Remove the placement groups of job `job_id` (hex) whose creator actor has died (an ended
    trial's Train controller); return them."""
    released = []
    for group in ray_private.placement_groups():
        if (
            group.job_id == job_id
            and group.creator_actor_id
            and group.creator_actor_dead
            and not group.detached
            and group.state != "REMOVED"
        ):
            ray_private.remove_placement_group(group.group_id)
            released.append(group)
    return released


def wait_released(
    job_id: str, timeout_s: float = 60.0, log: Callable[[str], None] = print
) -> list[ray_private.Reservation]:
    """At the end of a phase: give back what its ended runs reserved, polling until no Train
    controller of this job lives and no group one created is left (a controller dies a moment
    after its trial), for at most `timeout_s`. Returns (and says) what is still held then."""
    deadline = time.monotonic() + timeout_s
    while True:
        release_reservations(job_id)
        controllers = {
            a.actor_id
            for a in ray_private.actors()
            if a.job_id == job_id and a.class_name == TRAIN_CONTROLLER and a.state != "DEAD"
        }
        held = [
            g
            for g in ray_private.placement_groups()
            if g.job_id == job_id and g.creator_actor_id and g.state != "REMOVED"
        ]
        if (not held and not controllers) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if held:
        log(
            f"WARNING: {len(held)} placement group(s) of Train runs still held after "
            f"{timeout_s:g} s: "
            + "; ".join(f"{g.group_id[:8]} {g.state} {_bundles(g)}" for g in held)
        )
    return held


def _resources_text(resources: dict[str, float]) -> str:
    shown = {
        k: v
        for k, v in resources.items()
        if k in ("CPU", "GPU") or not k.startswith(("node:", "memory"))
    }
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(shown.items())) + "}"


def _bundles(group: ray_private.Reservation) -> str:
    shapes = [_resources_text(b) for b in group.bundles]
    return (
        f"{len(shapes)} x {shapes[0]}" if shapes and len(set(shapes)) == 1 else ", ".join(shapes)
    )


class ReservationWatch(Callback):
    """Tune callback of one Tune run of the study: every `interval_s` it gives back what ended
    trials reserved (release_reservations) and tells `say` how many running trials wait for their
    Train workers, and for what ("" once none waits); once trials have waited `starved_after_s`
    without a break (Ray Train's retries of a start included), it prints which reservations hold
    the cluster (by trial where Ray can tell), again every `starved_after_s` while that lasts.
    Tune pickles its callbacks with the run, so `say` must be picklable (a module-level function,
    or a partial of one)."""

    def __init__(
        self, say: Callable[[str], None], starved_after_s: float, interval_s: float = 2.0
    ) -> None:
        self.say, self.starved_after_s, self.interval_s = (
            say,
            float(starved_after_s),
            float(interval_s),
        )
        self._reset()

    def _reset(self) -> None:
        self._next_check = 0.0
        # the start of the current wait, None when none waits
        self._waiting_since: float | None = None
        self._said: str | None = None
        self._holders_said_at = -math.inf

    def __setstate__(self, state: dict[str, Any]) -> None:  # a restored run: timers start afresh
        self.__dict__.update(state)
        self._reset()

    def on_step_end(self, iteration, trials, **info):
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.interval_s
        job = ray.get_runtime_context().get_job_id()
        release_reservations(job)
        groups = [g for g in ray_private.placement_groups() if g.state != "REMOVED"]
        waiting = [
            g
            for g in groups
            if g.job_id == job
            and g.creator_actor_id
            and not g.creator_actor_dead
            and g.state in ("PENDING", "RESCHEDULING")
        ]
        if not waiting:
            self._waiting_since = None
            if self._said:
                self.say("")
            self._said = ""
            return
        self._waiting_since = self._waiting_since if self._waiting_since is not None else now
        waited = now - self._waiting_since
        what = (
            f"{len(waiting)} trial(s) waiting for their Train workers "
            f"({'; '.join(sorted({_bundles(g) for g in waiting}))})"
        )
        if what != self._said:
            self.say(what)
            self._said = what
        if waited >= self.starved_after_s and now - self._holders_said_at >= self.starved_after_s:
            self._holders_said_at = now
            print(
                f"[reservations] {what}: nothing could be placed for {waited:.0f} s; the cluster "
                f"is held by: {holders(groups, trials, job)}",
                flush=True,
            )


def holders(groups: list[ray_private.Reservation], trials, job_id: str) -> str:
    """Who holds the cluster's CPUs and GPUs: placement groups by trial (where Ray can tell: the
    group's creator, a Train controller, is owned by the trial's actor), by this study or by
    another job, and actors holding resources outside any group."""
    actors = ray_private.actors()
    by_id = {a.actor_id: a for a in actors}
    by_worker = {a.worker_id: a for a in actors if a.worker_id and a.state == "ALIVE"}
    trial_of_actor = {
        ray_private.trial_actor_id(t): t.trial_id
        for t in trials
        if t.temporary_state.ray_actor is not None
    }

    def owner(group: ray_private.Reservation) -> str:
        creator = by_id.get(group.creator_actor_id or "")
        trial_actor = by_worker.get(creator.owner_worker_id) if creator else None
        trial = trial_of_actor.get(trial_actor.actor_id) if trial_actor else None
        if trial:
            return f"trial {trial}"
        return "this study" if group.job_id == job_id else f"job {group.job_id}"

    def holds_devices(resources: dict[str, float]) -> bool:
        return resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0

    held = [
        f"{owner(g)}: {_bundles(g)}"
        for g in groups
        if g.state == "CREATED" and holds_devices(g.resources)
    ]
    held += [
        f"actor {a.class_name} of job {a.job_id}: {_resources_text(a.resources)}"
        for a in actors
        if a.state == "ALIVE" and a.placement_group_id is None and holds_devices(a.resources)
    ]
    return (
        "; ".join(held)
        or "none (the resources the trials ask for do not exist yet: an autoscaler may be "
        "starting a node)"
    )
