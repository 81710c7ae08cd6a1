"""The private Ray and Optuna-integration APIs the study relies on
(mgd_ray/distributed/ray_private.py) are still there, with the shape the study reads, in the pinned
Ray: an upgrade that moves one fails here, by name, rather than in the middle of a study. No Ray
instance is started (the Ray tests use placement_groups() and actors() against live clusters)."""

import optuna
import ray.train
from ray.core.generated import gcs_pb2
from ray.train.torch import TorchTrainer

from mgd_ray.distributed import ray_private
from mgd_ray.distributed.search import HonestOptunaSearch


def test_the_pinned_ray_is_the_one_these_apis_were_checked_against():
    assert ray.__version__.startswith("2.60."), ray.__version__


def test_gcs_tables_still_carry_the_fields_the_study_reads():
    read = {
        gcs_pb2.PlacementGroupTableData: {
            "placement_group_id",
            "state",
            "bundles",
            "creator_job_id",
            "creator_actor_id",
            "creator_actor_dead",
            "is_detached",
        },
        gcs_pb2.ActorTableData: {
            "actor_id",
            "class_name",
            "state",
            "job_id",
            "address",
            "owner_address",
            "is_detached",
            "placement_group_id",
            "required_resources",
        },
    }
    for table, fields in read.items():
        assert fields <= {f.name for f in table.DESCRIPTOR.fields}, table.__name__
    assert set(gcs_pb2.PlacementGroupTableData.PlacementGroupState.keys()) >= {
        "PENDING",
        "CREATED",
        "REMOVED",
    }
    accessor = ray_private.ray_state.GlobalState
    for name in (
        "_connect_and_get_accessor",
        "available_resources_per_node",
        "get_cluster_config",
    ):
        assert callable(getattr(accessor, name)), name


def test_the_trainer_leaves_out_exactly_ray_trains_placement_group_cleaner():
    trainer = ray_private.trainer_without_ray_cleaner(
        lambda config: None, scaling_config=ray.train.ScalingConfig(num_workers=1)
    )
    stock = [type(c).__name__ for c in TorchTrainer._create_default_callbacks(trainer)]
    ours = [type(c).__name__ for c in trainer._create_default_callbacks()]
    assert "PlacementGroupCleanerCallback" in stock
    assert ours == [name for name in stock if name != "PlacementGroupCleanerCallback"]


def test_the_head_nodes_own_resource_has_the_name_the_study_asks_for():
    from ray._common.constants import HEAD_NODE_RESOURCE_NAME

    assert ray_private.HEAD_NODE_RESOURCE == HEAD_NODE_RESOURCE_NAME


def test_local_address_and_the_fake_provider_and_raylet_name_are_where_the_study_finds_them():
    assert ray_private.local_address.__module__ == ray_private.__name__
    assert ray_private.services.canonicalize_bootstrap_address.__code__.co_argcount >= 1
    assert ray_private.PROCESS_TYPE_RAYLET == "raylet"
    assert callable(ray_private.FakeMultiNodeProvider.non_terminated_nodes)


def test_optuna_search_keeps_its_trials_study_and_told_ids_where_the_subclass_reads_them():
    searcher = HonestOptunaSearch(
        space={"x": optuna.distributions.FloatDistribution(0, 1)},
        metric="miou",
        mode="max",
        max_iterations=4,
        storage=optuna.storages.InMemoryStorage(),
    )
    trials, study, told = ray_private.optuna_trials(searcher)
    assert trials == {} and told == set() and isinstance(study, optuna.Study)
    searcher.suggest("t1")
    assert set(ray_private.optuna_trials(searcher)[0]) == {"t1"}


def test_a_group_a_driver_created_has_no_creator_actor():
    """Ray's nil ids are all 0xff bytes: a driver-created group (Tune's own trial groups) must read
    as created by no actor, or the study would take it for an ended trial's and remove it."""
    from ray import ActorID

    assert ray_private._hex_or_none(ActorID.nil().binary()) is None
    assert ray_private._hex_or_none(b"") is None
    assert ray_private._hex_or_none(bytes.fromhex("ab" * 16)) == "ab" * 16
