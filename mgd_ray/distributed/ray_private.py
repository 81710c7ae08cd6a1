"""Every private Ray and Optuna-integration API the study uses, in one place.

Ray 2.60 has no public way to do these things; each one is a small function or class here, and
tests/test_ray_private.py checks each against the pinned version (`ray>=2.60,<2.61`), so an
upgrade that moves one fails there, loudly, and not in the middle of a study.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import ray
from ray._private import ray_constants, services
from ray._private import state as ray_state
from ray.autoscaler._private.fake_multi_node.node_provider import FakeMultiNodeProvider
from ray.core.generated import gcs_pb2

__all__ = [
    "HEAD_NODE_RESOURCE",
    "FakeMultiNodeProvider",
    "PROCESS_TYPE_RAYLET",
    "Actor",
    "Reservation",
    "actors",
    "cluster_config",
    "local_address",
    "follow_train_log_level",
    "free_resources_per_node",
    "optuna_trial_id",
    "optuna_trials",
    "placement_groups",
    "remove_placement_group",
    "trainer_without_ray_cleaner",
    "trial_actor_id",
]

# The resource only the head node has (ray._common.constants.HEAD_NODE_RESOURCE_NAME): asking for
# a sliver of it places a process on the head.
HEAD_NODE_RESOURCE = "node:__internal_head__"

PROCESS_TYPE_RAYLET = ray_constants.PROCESS_TYPE_RAYLET
_PG_STATES = gcs_pb2.PlacementGroupTableData.PlacementGroupState
_ACTOR_STATES = gcs_pb2.ActorTableData.ActorState


def local_address() -> str | None:
    """The cluster a plain `ray.init()` would join (RAY_ADDRESS, or the last `ray start` on this
    machine); None when it would start a new local instance."""
    return services.canonicalize_bootstrap_address(None)


def cluster_config():
    """The autoscaler (v2) config the GCS publishes ({node_group_configs: [...]}), or None."""
    return ray_state.state.get_cluster_config()


def follow_train_log_level() -> None:
    """Ray 2.60 logs "Reporting training result ..." (every metric, per report) on a logger named
    after its source file, which RunConfig's LoggingConfig level does not reach: give that logger
    the run's ray.train level. Called in a Train worker; another Ray version is left alone."""
    try:
        from ray.train.v2._internal.execution import context as train_context

        run_config = train_context.get_train_context().train_run_context.get_run_config()
    except Exception:  # noqa: BLE001 -- never fail a run over its logging
        return
    logging.getLogger(train_context.__file__).setLevel(run_config.logging_config.log_level)


@dataclass(frozen=True)
class Reservation:
    """One placement group, as the GCS holds it."""

    group_id: str  # hex
    state: str  # PENDING, PREPARED, CREATED, REMOVED, RESCHEDULING
    bundles: tuple[dict[str, float], ...]
    job_id: str  # hex of the job that created it
    creator_actor_id: str | None  # None: created by a driver, not by an actor
    creator_actor_dead: bool
    detached: bool

    @property
    def resources(self) -> dict[str, float]:
        total: dict[str, float] = {}
        for bundle in self.bundles:
            for key, value in bundle.items():
                total[key] = total.get(key, 0.0) + value
        return total


def _hex_or_none(binary_id: bytes) -> str | None:
    """An id's hex, or None for the nil id (all 0xff bytes in Ray, or empty): a group a driver
    created has the nil actor as its creator."""
    return None if not binary_id.strip(b"\xff") or not binary_id.strip(b"\0") else binary_id.hex()


def placement_groups() -> list[Reservation]:
    """Every placement group of the cluster with its creator, read from the GCS directly.
    ray.util.placement_group_table() leaves the creator out, and the state API that has it
    needs the dashboard."""
    accessor = ray_state.state._connect_and_get_accessor()
    groups = []
    for raw in accessor.get_placement_group_table():
        data = gcs_pb2.PlacementGroupTableData.FromString(raw)
        creator = _hex_or_none(data.creator_actor_id)
        groups.append(
            Reservation(
                group_id=data.placement_group_id.hex(),
                state=_PG_STATES.Name(data.state),
                bundles=tuple(dict(b.unit_resources) for b in data.bundles),
                job_id=data.creator_job_id.hex(),
                creator_actor_id=creator,
                creator_actor_dead=data.creator_actor_dead,
                detached=data.is_detached,
            )
        )
    return groups


@dataclass(frozen=True)
class Actor:
    """One actor, as the GCS holds it."""

    actor_id: str
    class_name: str
    state: str  # DEPENDENCIES_UNREADY, PENDING_CREATION, ALIVE, RESTARTING, DEAD
    job_id: str
    worker_id: str  # hex of the worker process running it ("" before it runs)
    owner_worker_id: str  # hex of the worker process that created it
    placement_group_id: str | None
    detached: bool
    resources: dict[str, float]


def actors() -> list[Actor]:
    """Every actor of the cluster with its owner, read from the GCS directly (no dashboard)."""
    accessor = ray_state.state._connect_and_get_accessor()
    out = []
    for raw in accessor.get_actor_table(None, None):
        data = gcs_pb2.ActorTableData.FromString(raw)
        group = _hex_or_none(data.placement_group_id)
        out.append(
            Actor(
                actor_id=data.actor_id.hex(),
                class_name=data.class_name,
                state=_ACTOR_STATES.Name(data.state),
                job_id=data.job_id.hex(),
                worker_id=data.address.worker_id.hex(),
                owner_worker_id=data.owner_address.worker_id.hex(),
                placement_group_id=group,
                detached=data.is_detached,
                resources=dict(data.required_resources),
            )
        )
    return out


def free_resources_per_node() -> dict[str, dict[str, float]]:
    """{node id: resources free on it now}, from the GCS."""
    return ray_state.state.available_resources_per_node()


def remove_placement_group(group_id: str) -> None:
    """Remove a placement group by its hex id (the actors in it are killed)."""
    from ray.util.placement_group import PlacementGroup

    ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))


def trainer_without_ray_cleaner(*args: Any, **kwargs: Any):
    """TorchTrainer(*args, **kwargs) minus Ray Train's PlacementGroupCleaner.

    That cleaner is a detached actor per run that asks the state API, once a second, whether the
    run's controller still lives. Without the dashboard (a cluster started with
    --include-dashboard=false, a slim image) every query fails and it polls forever, one process
    per run, long after the study. The study removes the groups of dead controllers itself
    (reservations.release_reservations)."""
    return _trainer_class()(*args, **kwargs)


@functools.cache
def _trainer_class():
    # Imported here: the local cluster's autoscaler imports this module (local_provider.py) and
    # needs neither Ray Train nor torch.
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    class TrainerWithoutRayCleaner(TorchTrainer):
        def _create_default_callbacks(self):
            return [
                callback
                for callback in super()._create_default_callbacks()
                if not isinstance(callback, PlacementGroupCleanerCallback)
            ]

    return TrainerWithoutRayCleaner


def trial_actor_id(trial) -> str | None:
    """The hex id of the actor running a Tune trial (None when it has none)."""
    handle = trial.temporary_state.ray_actor
    return handle._actor_id.hex() if handle is not None else None


def optuna_trial_id(frozen) -> int:
    """The storage id of an Optuna FrozenTrial (what optuna.trial.Trial(study, id) takes)."""
    return frozen._trial_id


def optuna_trials(searcher) -> tuple[dict[str, Any], Any, set[str]]:
    """(Tune trial id -> optuna Trial, the optuna Study, ids already told) of Ray's OptunaSearch:
    its own attributes, which a subclass that tells Optuna more than Ray does has to share."""
    return searcher._ot_trials, searcher._ot_study, searcher._completed_trials
