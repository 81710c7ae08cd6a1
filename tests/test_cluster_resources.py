"""Trial resources checked against the cluster's node shapes (running nodes and autoscaler node
types), without Ray: what can never be met is refused naming the option."""

import math
import os

import pytest

from mgd_ray.distributed.cluster import UnmeetableResources, check_trial_fits, workers_per_node
from mgd_ray.distributed.study_config import StudyConfig

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
    check_trial_fits(
        scaling(1, cpus=4, gpus=1), [HEAD, GPU_1X]
    )  # no GPU node yet: the autoscaler starts one
    check_trial_fits(scaling(4, cpus=4, gpus=1), [HEAD, GPU_1X, GPU_4X])  # on one gpu_4x node
    check_trial_fits(scaling(2, cpus=4), [HEAD])


@pytest.mark.parametrize(
    "trial, shapes, says",
    [
        # more GPUs per worker than any node type has
        (
            scaling(1, cpus=1, gpus=8),
            [HEAD, GPU_1X, GPU_4X],
            r"--gpus-per-trial / --workers-per-trial \(8 GPU per worker\)",
        ),
        (scaling(1, gpus=1), [HEAD], "--gpus-per-trial"),  # a CPU-only cluster
        (scaling(1, cpus=16), [HEAD, GPU_1X], "--cpus-per-worker=16"),
        # A trial's workers are packed on one node (NCCL on the node): eight gpu_1x nodes hold 8
        # one-GPU workers between them, but never a 2-worker trial; two gpu_4x nodes never an
        # 8-worker one.
        (
            scaling(2, cpus=4, gpus=1),
            [HEAD, GPU_1X],
            r"--workers-per-trial=2: no node .* hosts 2 Train workers",
        ),
        (
            scaling(8, cpus=4, gpus=1),
            [HEAD, GPU_1X, GPU_4X],
            r"--workers-per-trial=8: .*at most 4",
        ),
    ],
)
def test_a_trial_no_node_can_host_is_refused_naming_the_option(trial, shapes, says):
    with pytest.raises(UnmeetableResources, match=says):
        check_trial_fits(trial, shapes)


def test_a_multi_worker_trial_asks_ray_to_pack_its_workers_on_one_node(tmp_path):
    from mgd_ray.distributed.plan import plan_protocol
    from mgd_ray.distributed.trial import scaling_config

    def strategy(**options):
        cfg = StudyConfig.from_options(output_dir=str(tmp_path), protocols=("1/8",), **options)
        return scaling_config(plan_protocol(cfg, "1/8").run).placement_strategy

    assert strategy(gpus_per_trial=4, workers_per_trial=4) == "STRICT_PACK"
    assert strategy(gpus_per_trial=0, workers_per_trial=2) == "STRICT_PACK"
    assert strategy(gpus_per_trial=1, workers_per_trial=1) == "PACK"  # one bundle: no matter


def test_resources_no_node_offers_are_refused_before_anything_is_written(
    tmp_path, capsys, monkeypatch
):
    """The cluster's answer (node shapes) is faked: no Ray. A refused study leaves no output
    folder, so the corrected command runs without --resume; it gets past the check and writes
    study.json."""
    from mgd_ray.distributed import study
    from tests.study_helpers import run_cli

    class PastTheChecks(Exception):
        pass

    def stop_after_the_writes(cfg, run):
        assert (tmp_path / "out" / "study.json").exists()
        raise PastTheChecks

    monkeypatch.setattr(study, "connect", lambda address, timeout: "127.0.0.1:1")
    monkeypatch.setattr(study, "node_shapes", lambda: [HEAD])  # a CPU-only cluster
    monkeypatch.setattr(study, "concurrency", stop_after_the_writes)
    argv = ["--smoke", "--no-ablation", "--output-dir", str(tmp_path / "out")]
    code, err = run_cli(argv + ["--gpus-per-trial", "1"], capsys)
    assert code == 2 and "--gpus-per-trial" in err and "no node of this cluster" in err
    assert not (tmp_path / "out").exists()  # not even the folder: the rerun needs no --resume
    with pytest.raises(PastTheChecks):
        run_cli(argv + ["--gpus-per-trial", "0"], capsys)


def test_trial_slots_count_what_is_free_now_or_what_an_autoscaler_may_start():
    from mgd_ray.distributed.cluster import trial_slots

    # 8 CPUs, 3 held by another job: 5 free -> two 2-worker trials, not the four the totals allow.
    assert trial_slots(scaling(2), [HEAD], [{"CPU": 5.0, "GPU": 0.0}]) == 2
    # No GPU node yet: the autoscaler may start 8 gpu_1x nodes, one 1-GPU worker each.
    assert trial_slots(scaling(1, cpus=4, gpus=1), [HEAD, GPU_1X], [{"CPU": 8.0}]) == 8
    # Four trials share each GPU (1/4 GPU per worker): 2 gpu_4x nodes x 4 GPUs x 4.
    assert trial_slots(scaling(1, cpus=1, gpus=0.25), [HEAD, GPU_4X], [{"CPU": 8.0}]) == 32
    # CPU-only trials on a cluster of GPU node types: no slot on them (the autoscaler keeps them
    # for GPUs).
    assert trial_slots(scaling(1), [HEAD, GPU_1X], [{"CPU": 3.0}]) == 3
    # Nothing fits now and no autoscaler: one trial in flight, which waits (and is said to wait).
    assert trial_slots(scaling(2), [HEAD], [{"CPU": 1.0}]) == 1
    # 4-worker trials are packed on one node: gpu_1x nodes hold none of them; 2 gpu_4x nodes 2.
    assert trial_slots(scaling(4, cpus=4, gpus=1), [HEAD, GPU_1X, GPU_4X], [{"CPU": 8.0}]) == 2
    # Two live nodes with 1 free CPU each: 2 CPUs free, but no node for a 2-worker trial now.
    assert trial_slots(scaling(2), [HEAD], [{"CPU": 1.0}, {"CPU": 1.0}]) == 1
    assert trial_slots(scaling(2), [HEAD], [{"CPU": 3.0}, {"CPU": 2.0}]) == 2


def test_trials_sharing_a_gpu_are_refused_when_they_cannot_fit_its_memory(
    tmp_path, monkeypatch, capsys
):
    """One worker per shared trial: it holds the whole batch of 8 on one device. Measured at crop
    512 (docs/benchmarks.md section 7): a ResNet-101 CPS step at 8 images reserves 16.9 GiB, a
    ResNet-18 MGD step 6.88 GiB, each plus a 0.51 GiB CUDA context; an A10G has 22.5 GiB."""
    from mgd_ray.distributed import plan
    from mgd_ray.distributed.plan import check_gpu_sharing, plan_protocol, plan_study

    a10g = lambda address: (22.5, "A10G")  # noqa: E731
    monkeypatch.setattr(plan, "gpu_memory", a10g)
    shared = dict(gpus_per_trial=1, protocols=("1/8",), crop_size=512, batch_size=8)
    cfg = StudyConfig.from_options(output_dir=str(tmp_path / "a"), trials_per_gpu=4, **shared)
    with pytest.raises(ValueError) as refused:
        plan_study(cfg)  # before Ray starts, before any data is built
    assert (
        "--trials-per-gpu=4: 4 teacher runs (deeplabv3plus_resnet101, 8 images per device at "
        "crop 512) need about 4 x 17.4 = 69.6 GiB, more than the 22.5 GiB of A10G; at most 1 "
        "fit" in str(refused.value)
    )
    assert not os.path.exists(tmp_path / "a")

    teachers = {}
    for role in ("deep", "wide"):  # given teachers: no teacher is trained, students alone count
        (tmp_path / f"{role}.pt").write_bytes(b"")
        teachers[f"teacher_{role}_checkpoint"] = str(tmp_path / f"{role}.pt")
    for n, fits in ((4, False), (3, True)):  # 4 x 7.39 = 29.6 GiB; 3 x 7.39 = 22.2 GiB
        cfg = StudyConfig.from_options(
            output_dir=str(tmp_path / "b"), trials_per_gpu=n, **shared, **teachers
        )
        plans = [plan_protocol(cfg, "1/8")]
        if fits:
            check_gpu_sharing(cfg, plans, a10g)
        else:
            with pytest.raises(ValueError, match=r"4 student trial runs .* 4 x 7\.4 = 29\.6 GiB"):
                check_gpu_sharing(cfg, plans, a10g)

    # The synthetic GPU budget (crop 48, batch 8, 4 trials per GPU) fits a 15 GiB T4.
    small = StudyConfig.from_options(
        output_dir=str(tmp_path / "c"), gpus_per_trial=1, trials_per_gpu=4, batch_size=8
    )
    check_gpu_sharing(small, [plan_protocol(small, "1/8")], lambda address: (15.0, "T4"))
    check_gpu_sharing(small, [plan_protocol(small, "1/8")], lambda address: None)
    assert "the GPU's memory is unknown here" in capsys.readouterr().out


def test_the_gpu_types_of_a_cluster_come_from_ray_resources_and_instance_types(monkeypatch):
    from mgd_ray.distributed import cluster

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.setenv(cluster.AUTOSCALING_CONFIG_ENV, os.path.join(repo, "cluster.yaml"))
    live = [("node 10.0.0.2 (ab)", {"CPU": 8.0, "GPU": 1.0, "accelerator_type:L4": 1.0}, 1.0)]
    assert cluster.cluster_accelerators(live) == {"L4", "A10G"}  # g5.xlarge, g5.12xlarge: A10G
