"""Trial resources checked against the cluster's node shapes (running nodes and autoscaler node
types), without Ray: what can never be met is refused naming the option."""
import math

import pytest

from mgd_ray.distributed.cluster import UnmeetableResources, check_trial_fits, workers_per_node

HEAD = ("node head", {"CPU": 8.0, "GPU": 0.0, "memory": 1e10}, 1.0)
GPU_1X = ("node type gpu_1x", {"CPU": 4.0, "GPU": 1.0}, 8.0)
GPU_4X = ("node type gpu_4x", {"CPU": 48.0, "GPU": 4.0}, 2.0)


def scaling(workers, cpus=1, gpus=0):
    return {"workers": workers, "cpus_per_worker": cpus, "gpus_per_worker": gpus}


def test_workers_per_node_is_the_scarcest_resource():
    assert workers_per_node({"CPU": 48, "GPU": 4}, {"CPU": 4, "GPU": 1}) == 4
    assert workers_per_node({"CPU": 6, "GPU": 4}, {"CPU": 4, "GPU": 1}) == 1
    assert workers_per_node({"CPU": 8}, {"CPU": 1, "GPU": 1}) == 0
    assert workers_per_node({"CPU": 8}, {"CPU": 0, "GPU": 0}) == math.inf


def test_trials_that_some_node_type_can_host_pass():
    check_trial_fits(scaling(1, cpus=4, gpus=1), [HEAD, GPU_1X])  # no GPU node yet: the autoscaler starts one
    check_trial_fits(scaling(8, cpus=4, gpus=1), [HEAD, GPU_4X])  # two gpu_4x nodes
    check_trial_fits(scaling(2, cpus=4), [HEAD])


def test_more_gpus_per_worker_than_any_node_type_names_the_gpu_option():
    with pytest.raises(UnmeetableResources, match=r"--gpus-per-trial / --workers-per-trial \(8 GPU per worker\)"):
        check_trial_fits(scaling(1, cpus=1, gpus=8), [HEAD, GPU_1X, GPU_4X])
    with pytest.raises(UnmeetableResources, match="--gpus-per-trial"):
        check_trial_fits(scaling(1, gpus=1), [HEAD])  # a CPU-only cluster


def test_more_cpus_per_worker_than_any_node_names_the_cpu_option():
    with pytest.raises(UnmeetableResources, match="--cpus-per-worker=16"):
        check_trial_fits(scaling(1, cpus=16), [HEAD, GPU_1X])


def test_more_workers_than_the_whole_cluster_can_host_names_the_worker_option():
    with pytest.raises(UnmeetableResources, match=r"--workers-per-trial=9: the cluster can host at most 8"):
        check_trial_fits(scaling(9, cpus=4, gpus=1), [HEAD, GPU_1X])
