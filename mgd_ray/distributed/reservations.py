"""What trials reserve, and giving it back; what a trial whose workers wait is waiting for.

A trial's Ray Train run holds its workers' resources in a placement group that the run's controller
creates. Tune ends a trial (its last report, ASHA's stop, a stopped study) by ending the trial's
actor; the controller, which that actor owns, dies with it before its shutdown path has removed the
group. The GCS frees a group only once its creator actor AND its job are dead, and the job is the
study's driver: left alone, every such group outlives its trial until the study ends, and the study
stalls once they fill the cluster. Ray Train's own PlacementGroupCleaner asks the state API, which
needs the dashboard (and a machine with one Ray instance). So the study gives them back itself: a
group of this job whose creator actor is dead has nobody left to use it.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import ray
from ray.tune import Callback

from . import ray_private

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
