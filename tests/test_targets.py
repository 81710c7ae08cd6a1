"""Shared teacher targets (issue 21): a student trained from a store written by `write_targets`
equals one trained with live teachers; a resumed run replays the data and masks of an
uninterrupted one; the data stream is a function of the data alone; stores that do not match a
run are refused; a resumed writer writes only what is missing.

Runs use the synthetic set at crop 32, batch 2, and a tiny segmenter with BN in place of the
DeepLabv3+ networks (what is tested is the engine around them; the real networks' batched forwards
are tested in test_batch_groups.py); the live run is the reference for the stored one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import zstandard
from torch import nn

from mgd_ray.config import DataConfig, DistillConfig, LossWeights, OptimConfig
from mgd_ray.data import SegmentationDataset, build_datasets, mix
from mgd_ray.engine import LocalContext, distill_student, loop, seeds
from mgd_ray.engine import target_store as store_module
from mgd_ray.engine.batches import Batches, IterationData, iteration_loader
from mgd_ray.engine.builders import Builders
from mgd_ray.engine.checkpoint import atomic_save, load_checkpoint
from mgd_ray.engine.target_store import load_arrays, write_targets
from mgd_ray.engine.targets import (
    array_names,
    compute_targets,
    freeze,
    from_arrays,
    to_arrays,
)
from mgd_ray.losses import confidence_code, pseudo_label
from tests.tiny import TinySeg

ITERATIONS = 3
STREAMS = [1, 2]  # the store's mask streams: student seeds 1 and 2
VARIANTS = {  # the ablation table's weight sets (the paper's lambda_I, lambda_R)
    "supervised": LossWeights(1.0, 0.0, 0.0, 0.0),
    "pixel": LossWeights(1.0, 1.0, 0.0, 0.0),
    "pixel_semantic": LossWeights(1.0, 1.0, 0.002, 0.0),
    "pixel_region": LossWeights(1.0, 1.0, 0.0, 100.0),
    "mgd_paper": LossWeights(1.0, 1.0, 0.002, 100.0),
}


# Two train-mode BNs in the tiny networks here, so that BN groups matter.
BUILT: list[str] = []  # the architectures built, teachers and students


def tiny_model(arch, num_classes, output_stride=None, backbone_weights=None):
    BUILT.append(arch)
    return TinySeg(num_classes, blocks=2)


def small_val(cfg, save_split=True):
    """The real datasets with 2 val images (evaluation is not what these tests are about)."""
    data = build_datasets(cfg, save_split)
    data.val = SegmentationDataset(data.val.samples[:2], "val", cfg.crop_size)
    return data


# The engine's runs here build tiny networks and a small val set (engine/builders.py).
TINY = Builders(model=tiny_model, datasets=small_val)


def write_teachers(folder: str) -> dict[str, str]:
    """Two random teachers whose classifiers are scaled up: confidences spread over (0.2, 1), so a
    threshold of 0.5 keeps some pixels and drops others."""
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for index, role in enumerate(("deep", "wide")):
        torch.manual_seed(10 + index)
        teacher = TinySeg(6, blocks=2)
        with torch.no_grad():
            teacher.head.weight.mul_(6.0)
        paths[f"teacher_{role}_checkpoint"] = os.path.join(folder, f"{role}.pt")
        atomic_save(teacher.state_dict(), paths[f"teacher_{role}_checkpoint"])
    return paths


def config(
    folder: str, teachers: dict[str, str], weights=VARIANTS["mgd_paper"], workers=0, **overrides
) -> DistillConfig:
    data = DataConfig(
        crop_size=32,
        batch_size=2,
        num_workers=workers,
        split_out_dir=os.path.join(folder, "split"),
    )
    fields = dict(
        student="deeplabv3plus_resnet18",
        teacher_deep="deeplabv3plus_resnet18",
        teacher_wide="deeplabv3plus_resnet18",
        data=data,
        iterations=ITERATIONS,
        eval_every=ITERATIONS,
        optim=OptimConfig(lr=0.05),
        weights=weights,
        seed=1,
        **teachers,
    )
    fields.update(overrides)
    return DistillConfig(**fields)


@contextmanager
def recorded_steps():
    """The rank-averaged logged values of every optimizer step of the runs inside the block."""
    steps, original = [], loop.optimizer_step

    def spy(*args, **kwargs):
        values = original(*args, **kwargs)
        steps.append(values)
        return values

    loop.optimizer_step = spy
    try:
        yield steps
    finally:
        loop.optimizer_step = original


def train(cfg: DistillConfig, folder: str, ctx_type=LocalContext) -> tuple[list[dict], dict]:
    """(the logged values of each iteration, the final student weights) of a run of cfg."""
    ctx = ctx_type(folder, verbose=False)
    with recorded_steps() as steps:
        distill_student(cfg, ctx, TINY)
    if ctx.latest_checkpoint() is None:  # a rank > 0 keeps no checkpoint: its weights in memory
        return steps, {k: v.detach().clone() for k, v in ctx.model.module.state_dict().items()}
    return steps, load_checkpoint(os.path.join(folder, "checkpoint", "model.pt"))


def assert_same_training(live, stored) -> None:
    (live_steps, live_weights), (stored_steps, stored_weights) = live, stored
    assert len(live_steps) == len(stored_steps) == ITERATIONS
    for a, b in zip(live_steps, stored_steps):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
    assert live_weights.keys() == stored_weights.keys()
    for key, value in live_weights.items():
        assert torch.allclose(stored_weights[key].float(), value.float(), rtol=1e-5, atol=1e-6), (
            key
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Teachers and a store of their targets for STREAMS, written once for the module."""
    folder = str(tmp_path_factory.mktemp("targets"))
    teachers = write_teachers(folder)
    store = os.path.join(folder, "store")
    stats = write_targets(
        config(folder, teachers),
        STREAMS,
        range(ITERATIONS),
        LocalContext(os.path.join(folder, "writer"), verbose=False),
        store,
        TINY,
    )
    yield {"folder": folder, "teachers": teachers, "store": store, "stats": stats}


@pytest.mark.parametrize(
    "variant, threshold, seed, workers",
    [
        ("supervised", 0.0, 1, 0),
        ("pixel", 0.0, 2, 0),
        ("pixel_semantic", 0.0, 1, 0),
        ("pixel_region", 0.0, 2, 0),
        ("mgd_paper", 0.0, 1, 0),
        ("mgd_paper", 0.5, 2, 2),
    ],
)
def test_training_from_the_store_equals_training_with_live_teachers(
    world, monkeypatch, variant, threshold, seed, workers
):
    """workers: the stored run's loader workers, which then read the targets."""
    folder = os.path.join(world["folder"], f"{variant}-{threshold}-{seed}")
    cfg = config(
        world["folder"],
        world["teachers"],
        VARIANTS[variant],
        confidence_threshold=threshold,
        seed=seed,
    )
    live = train(cfg, os.path.join(folder, "live"))
    BUILT.clear()
    from_store = config(
        world["folder"],
        world["teachers"],
        VARIANTS[variant],
        workers,
        confidence_threshold=threshold,
        seed=seed,
        targets=world["store"],
    )
    stored = train(from_store, os.path.join(folder, "stored"))
    assert BUILT == ["deeplabv3plus_resnet18"]  # the student alone: no teacher is built
    assert_same_training(live, stored)
    kept = [step["kept_fraction"] for step in live[0]]
    if VARIANTS[variant].pixel and threshold > 0:  # the threshold decides: some kept, not all
        assert all(0.05 < k < 0.95 for k in kept), kept
    elif VARIANTS[variant].pixel:
        assert kept == [1.0] * ITERATIONS


def test_the_writer_reports_and_lays_out_what_it_wrote(world):
    stats = world["stats"]
    files = sorted(os.listdir(os.path.join(world["store"], "rank0of1")))
    assert files == [f"{t:07d}.npz.zst" for t in range(ITERATIONS)]
    assert stats["iterations"] == stats["files_written"] == ITERATIONS
    folder = os.path.join(world["store"], "rank0of1")
    assert stats["bytes_written"] == sum(os.path.getsize(os.path.join(folder, f)) for f in files)
    manifest = json.load(open(os.path.join(world["store"], "manifest.json")))
    assert manifest["streams"] == STREAMS and manifest["iterations"] == ITERATIONS
    assert (manifest["world_size"], manifest["batch_size"], manifest["num_classes"]) == (1, 2, 6)
    with open(os.path.join(folder, files[0]), "rb") as f:
        arrays = load_arrays(f.read())
    assert arrays["deep.u0.label"].dtype == arrays["wide.x_l.code"].dtype == np.uint8
    assert arrays["deep.u1.label"].shape == (2, 32, 32)
    for s in STREAMS:
        pooled, similarity = arrays[f"deep.x_m@{s}.pooled"], arrays[f"wide.x_m@{s}.similarity"]
        assert pooled.shape == (2, 6) and similarity.shape == (2, 49, 49)
        assert pooled.dtype == similarity.dtype == np.float32
    # Other masks, other mixed images.
    assert not np.array_equal(arrays["deep.x_m@1.pooled"], arrays["deep.x_m@2.pooled"])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"data": {"seed": 1}}, "data_seed: store has 0, this run has 1"),
        ({"data": {"crop_size": 48}}, "crop_size: store has 32, this run has 48"),
        ({"data": {"batch_size": 1}}, "batch_size: store has 2, this run has 1"),
        (
            {"seed": 3},
            r"streams: store has \[1, 2\], this run's mask stream \(seed 3\) is not "
            "among them",
        ),
        (
            {"iterations": ITERATIONS + 1},
            f"iterations: store has {ITERATIONS}, this run needs {ITERATIONS + 1}",
        ),
        ({"teacher_train_mode": False}, "teacher_train_mode: store has True, this run has False"),
        (
            {"teacher_wide_checkpoint": "other"},
            "teacher_wide_sha256: store has '[0-9a-f]{64}', this run has '[0-9a-f]{64}'",
        ),
    ],
)
def test_a_store_that_does_not_match_the_run_is_refused(world, monkeypatch, change, message):
    cfg = config(world["folder"], world["teachers"], targets=world["store"]).to_dict()
    if "data" in change:
        cfg["data"].update(change.pop("data"))
    if change.get("teacher_wide_checkpoint") == "other":  # another teacher, the same architecture
        torch.manual_seed(99)
        change["teacher_wide_checkpoint"] = os.path.join(world["folder"], "other_wide.pt")
        atomic_save(TinySeg(6, blocks=2).state_dict(), change["teacher_wide_checkpoint"])
    cfg.update(change)
    BUILT.clear()
    expected = f"teacher targets store {world['store']} does not match this run: .*{message}"
    with pytest.raises(ValueError, match=expected):
        distill_student(
            DistillConfig.from_dict(cfg),
            LocalContext(os.path.join(world["folder"], "x"), verbose=False),
            TINY,
        )
    assert BUILT == []  # refused before any network is built


def test_a_resumed_writer_writes_only_the_missing_iterations(world, monkeypatch, tmp_path):
    cfg = config(world["folder"], world["teachers"], iterations=4)
    store = str(tmp_path / "store")

    def write(iterations, streams=STREAMS):
        ctx = LocalContext(str(tmp_path / "w"), verbose=False)
        return write_targets(cfg, streams, iterations, ctx, store, TINY)

    first = write(range(0, 2))  # one chunk, then the whole range: only the other chunk is written
    assert (first["iterations"], first["files_written"]) == (2, 2)

    def path(t):
        return str(tmp_path / "store" / "rank0of1" / f"{t:07d}.npz.zst")

    kept_file = os.stat(path(0)).st_mtime_ns
    second = write(range(0, 4))
    assert (second["iterations"], second["files_written"]) == (2, 2)
    assert os.stat(path(0)).st_mtime_ns == kept_file
    before = load_arrays(open(path(3), "rb").read())
    os.remove(path(3))  # a writer that died before this file
    third = write(range(0, 4))
    assert (third["iterations"], third["files_written"]) == (1, 1)
    after = load_arrays(open(path(3), "rb").read())
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert write(range(0, 4))["iterations"] == 0
    with pytest.raises(ValueError, match=r"streams: store has \[1, 2\], this run has \[1, 2, 3\]"):
        write(range(0, 4), STREAMS + [3])  # a store's streams are fixed when it is first written


def test_codes_are_stored_as_their_2d_difference_and_read_back_exactly():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (2, 9, 11), dtype=np.uint8)  # any values: the sums wrap mod 256
    assert np.array_equal(store_module.undifference(store_module.difference(codes)), codes)
    ramp = (np.arange(8)[:, None] * 3 + np.arange(10)[None, :] * 5 + 7).astype(np.uint8)[None]
    diff = store_module.difference(ramp)  # a plane: only the first row and column are not 0
    assert not diff[0, 1:, 1:].any() and diff[0, 0, 0] == 7
    targets = {"wide.x_l.code": torch.from_numpy(codes), "wide.x_l.label": torch.from_numpy(codes)}
    raw = store_module.encode(targets)
    unpacked = zstandard.ZstdDecompressor().decompress(raw)  # an .npz inside the zstd frame
    with np.load(io.BytesIO(unpacked)) as stored:
        assert np.array_equal(stored["wide.x_l.code"], store_module.difference(codes))
        assert np.array_equal(stored["wide.x_l.label"], codes)
    back = store_module.decode(raw)
    assert all(torch.equal(back[k], v) for k, v in targets.items())


def test_labels_and_codes_of_a_mix_are_those_of_its_sources():
    """Under a binary mask, the argmax and max softmax of (1 - M) T(u0) + M T(u1) are those of
    T(u0) where M = 0 and of T(u1) where M = 1: why per-pixel targets serve every mask."""
    torch.manual_seed(0)
    a, b = torch.randn(2, 6, 16, 16) * 3, torch.randn(2, 6, 16, 16) * 3
    mask = (torch.rand(2, 16, 16) > 0.5).float()
    label_mix, confidence_mix = pseudo_label(mix(mask, a, b))
    (label_a, conf_a), (label_b, conf_b) = pseudo_label(a), pseudo_label(b)
    shows_b = mask.bool()
    assert torch.equal(label_mix, torch.where(shows_b, label_b, label_a))
    assert torch.equal(
        confidence_code(confidence_mix),
        torch.where(shows_b, confidence_code(conf_b), confidence_code(conf_a)),
    )


def test_targets_of_a_batch_do_not_depend_on_the_other_streams_in_the_forward():
    """One forward over u0, u1, x_l and several x_m (each its own BN group) gives each stream the
    targets a forward with that stream alone gives."""
    torch.manual_seed(0)
    teacher = freeze(TinySeg(6, blocks=2), train_mode=True)
    x_l, u0, u1 = (torch.randn(2, 3, 32, 32) for _ in range(3))
    masks = {s: (torch.rand(2, 32, 32) > 0.5).float() for s in (4, 5)}
    both = to_arrays(compute_targets({"wide": teacher}, x_l, u0, u1, masks))
    alone = to_arrays(compute_targets({"wide": teacher}, x_l, u0, u1, {5: masks[5]}))
    assert set(both) == set(alone) | {"wide.x_m@4.similarity"}
    for key, value in alone.items():
        assert torch.allclose(both[key].float(), value.float(), atol=1e-6), key


def test_targets_come_back_from_a_stores_file_as_they_were_computed():
    """The typed targets of each stream, through a store file's named arrays and back: the same
    tensors, per-pixel ones shared by the streams and stored once; the reader's selection for a
    stream and terms holds exactly what those terms read."""
    torch.manual_seed(0)
    teachers = {"deep": freeze(TinySeg(6, blocks=2)), "wide": freeze(TinySeg(6, blocks=2))}
    x_l, u0, u1 = (torch.randn(2, 3, 32, 32) for _ in range(3))
    masks = {s: (torch.rand(2, 32, 32) > 0.5).float() for s in (3, 7)}
    streams = compute_targets(teachers, x_l, u0, u1, masks)
    arrays = to_arrays(streams)
    assert len(arrays) == 2 * (3 * 2 + 2)  # per teacher: 3 batches x (label, code), 2 streams' x_m
    raw = store_module.encode(arrays)
    every = {"sup", "pixel", "semantic", "region"}
    for s in masks:
        back = from_arrays(store_module.decode(raw, array_names(every, s)), s)
        for name in ("deep", "wide"):
            mine, theirs = streams[s].teacher(name), back.teacher(name)
            for batch in ("u0", "u1", "x_l"):
                assert torch.equal(mine.pixel(batch).label, theirs.pixel(batch).label)
                assert torch.equal(mine.pixel(batch).code, theirs.pixel(batch).code)
            assert torch.equal(mine.mixed, theirs.mixed)
        assert back.missing(every) == []
    assert not torch.equal(streams[3].deep.mixed, streams[7].deep.mixed)  # other masks
    assert streams[3].deep.u0 is streams[7].deep.u0
    # L_I alone reads the deep teacher's x_m target of its stream and nothing else.
    only = from_arrays(store_module.decode(raw, array_names({"semantic"}, 7)), 7)
    assert only.wide is None and only.deep.u0 is None
    assert torch.equal(only.deep.mixed, streams[7].deep.mixed)
    assert only.missing({"semantic", "region"}) == ["wide.mixed"]
    assert only.missing({"pixel"}) == [
        "deep.u0",
        "deep.u1",
        "deep.x_l",
        "wide.u0",
        "wide.u1",
        "wide.x_l",
    ]


# ---- the data stream ----------------------------------------------------------------------------


def digest(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@contextmanager
def recorded_inputs():
    """Per iteration run, (iteration, digest of x_l, y, u0 and u1, digest of the CutMix mask)."""
    seen, original = [], Batches.next_batch

    def spy(self, device, iteration, mask_seed):
        batch = original(self, device, iteration, mask_seed)
        seen.append(
            (iteration, digest(batch.x_l, batch.y, batch.u0, batch.u1), digest(batch.mask))
        )
        return batch

    Batches.next_batch = spy
    try:
        yield seen
    finally:
        Batches.next_batch = original


class Interrupt(Exception):
    pass


def test_a_resumed_run_replays_the_data_and_masks_of_an_uninterrupted_one(
    world, monkeypatch, tmp_path
):
    cfg = config(world["folder"], world["teachers"], iterations=4, eval_every=2)
    with recorded_inputs() as whole:
        _, weights = train(cfg, str(tmp_path / "whole"))

    def stop_at_2(metrics):
        if metrics["iteration"] == 2:
            raise Interrupt

    with recorded_inputs() as parts:
        with pytest.raises(Interrupt):
            distill_student(
                cfg,
                LocalContext(str(tmp_path / "parts"), verbose=False, on_report=stop_at_2),
                TINY,
            )
        _, resumed = train(cfg, str(tmp_path / "parts"))
    assert [i for i, *_ in parts] == [0, 1, 2, 3] and parts == whole
    for key, value in weights.items():
        assert torch.allclose(resumed[key].float(), value.float(), rtol=1e-5, atol=1e-6), key

    # Another trial seed: the same images, other masks (and other initial weights).
    with recorded_inputs() as other_seed:
        train(
            config(world["folder"], world["teachers"], iterations=2, seed=7),
            str(tmp_path / "seed7"),
        )
    assert [d for _, d, _ in other_seed] == [d for _, d, _ in whole[:2]]
    assert all(m != m7 for (*_, m), (*_, m7) in zip(whole, other_seed))


def stream_items(cfg: DataConfig, data, world: int, rank: int, iterations: range, workers: int):
    items = IterationData(data.labeled, data.unlabeled, cfg, world, rank)
    return list(iteration_loader(items, iterations, workers, torch.device("cpu")))


def test_the_stream_is_the_same_with_loader_workers_and_resumed_midway(tmp_path):
    cfg = DataConfig(crop_size=32, batch_size=2, split_out_dir=str(tmp_path / "split"))
    data = build_datasets(cfg)
    in_process = stream_items(cfg, data, 1, 0, range(0, 5), workers=0)
    with_workers = stream_items(cfg, data, 1, 0, range(2, 5), workers=2)  # and started at 2
    for a, b in zip(in_process[2:], with_workers):
        assert a["iteration"] == b["iteration"]
        assert all(torch.equal(a[k], b[k]) for k in ("x_l", "y", "u")), a["iteration"]
    assert not torch.equal(in_process[0]["u"], in_process[1]["u"])


def test_ranks_shard_each_epoch_without_repeats_and_epochs_reshuffle(tmp_path):
    """Within an epoch every (rank, iteration) batch holds other images; the next epoch draws
    another order. Shown on the indices, computed on their own for 2 ranks."""
    cfg = DataConfig(crop_size=32, batch_size=2, seed=3, split_out_dir=str(tmp_path / "split"))
    data = build_datasets(cfg)
    ranks = [IterationData(data.labeled, data.unlabeled, cfg, 2, r) for r in range(2)]
    for role, per_rank in (("labeled", 2), ("unlabeled", 4)):
        size = len(getattr(data, role))
        per_epoch = size // (per_rank * 2)
        assert ranks[0].per_epoch[role] == per_epoch
        epochs = []
        for epoch in range(2):
            drawn = [
                i
                for t in range(epoch * per_epoch, (epoch + 1) * per_epoch)
                for items in ranks
                for i in items.indices(role, t)
            ]
            assert len(drawn) == len(set(drawn)) == per_epoch * per_rank * 2  # no image twice
            assert set(drawn) <= set(range(size))
            epochs.append(drawn)
        assert epochs[0] != epochs[1]
    with pytest.raises(
        ValueError,
        match="labeled set has 40 images, fewer than one batch of 32 per worker x 2 workers",
    ):
        IterationData(data.labeled, data.unlabeled, DataConfig(batch_size=32), 2, 0)


def test_named_seed_streams_are_distinct_and_stable():
    # Both were seed * 1000 + rank: the CutMix boxes and torch's global generator replayed one.
    assert seeds.student_cutmix(0, 0, 0) != seeds.student_global(0, 0)
    assert seeds.student_cutmix(1, 0, 5) != seeds.teacher_cutmix(1, 0, 5)
    assert seeds.derive("x", 1, 2) != seeds.derive("x", 2, 1) != seeds.derive("y", 1, 2)
    assert 0 <= seeds.derive("x", -1) < 2**63
    # A stable hash, not Python's salted one: the same value in every process and on every machine.
    assert seeds.student_cutmix(0, 0, 0) == 1775665713337375621


# ---- two DDP ranks ------------------------------------------------------------------------------


class DDPContext(LocalContext):
    def prepare_model(self, model):
        self.model = nn.parallel.DistributedDataParallel(model.to(self.device))
        return self.model


def _two_rank_worker(rank: int, world: int, folder: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo", init_method=f"file://{folder}/init", rank=rank, world_size=world
    )
    try:
        torch.set_num_threads(1)
        # Each rank writes its own copy: the same seeded weights, hence the same bytes.
        teachers = write_teachers(os.path.join(folder, f"teachers{rank}"))
        cfg = config(folder, teachers, confidence_threshold=0.5, seed=2)
        store = os.path.join(folder, "store")
        stats = write_targets(
            cfg, STREAMS, range(ITERATIONS), LocalContext(folder, verbose=False), store, TINY
        )
        live = train(cfg, os.path.join(folder, f"live{rank}"), DDPContext)
        BUILT.clear()
        stored = train(
            DistillConfig.from_dict({**cfg.to_dict(), "targets": store}),
            os.path.join(folder, f"stored{rank}"),
            DDPContext,
        )
        torch.save(
            {"stats": stats, "live": live, "stored": stored, "built": list(BUILT)},
            os.path.join(folder, f"rank{rank}.pt"),
        )
        dist.barrier()  # neither rank tears gloo down while the other still uses it
    finally:
        dist.destroy_process_group()


def test_training_from_the_store_equals_live_teachers_on_two_ddp_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_two_rank_worker, args=(2, str(tmp_path)), nprocs=2)
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert sorted(os.listdir(tmp_path / "store")) == ["manifest.json", "rank0of2", "rank1of2"]
    for result in results:
        assert result["stats"]["files_written"] == 2 * ITERATIONS  # summed over the ranks
        assert result["built"] == ["deeplabv3plus_resnet18"]
        assert result["live"][1] and result["stored"][1]  # weights on both ranks, not {} vs {}
        assert_same_training(result["live"], result["stored"])
    # DDP keeps the ranks' weights equal: rank 1's in memory are rank 0's checkpoint.
    assert_same_training(results[0]["stored"], results[1]["stored"])
    assert 0.05 < results[0]["live"][0][0]["kept_fraction"] < 0.95
    # The ranks trained on other images: their first-iteration files differ.
    first = [
        load_arrays((tmp_path / "store" / f"rank{r}of2" / "0000000.npz.zst").read_bytes())
        for r in range(2)
    ]
    assert not np.array_equal(first[0]["deep.u0.label"], first[1]["deep.u0.label"])


def test_a_files_digest_is_kept_beside_it_while_the_file_is_unchanged(tmp_path):
    """storage.sha256 reads `<file>.sha256` while the file's size and mtime match it, so trials
    do not read a teacher's bytes to check a store; a rewritten file is hashed again."""
    import hashlib
    import os

    from mgd_ray import storage

    path = tmp_path / "teacher.pt"
    path.write_bytes(b"weights one")
    assert storage.sha256(str(path)) == hashlib.sha256(b"weights one").hexdigest()
    stamp, digest = (tmp_path / "teacher.pt.sha256").read_text().rsplit(" ", 1)
    (tmp_path / "teacher.pt.sha256").write_text(
        f"{stamp} {'0' * 64}"
    )  # the sidecar is what is read
    assert storage.sha256(str(path)) == "0" * 64
    path.write_bytes(b"weights two")
    os.utime(path, ns=(1, 1))  # a rewrite: another size and mtime
    assert storage.sha256(str(path)) == hashlib.sha256(b"weights two").hexdigest()


# ---- one step's terms, written out from raw teacher outputs -------------------------------------


def _frozen_train_mode(model: nn.Module) -> nn.Module:
    """The paper's teachers: train-mode BN (batch statistics), never updated."""
    model.requires_grad_(False).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0
    return model


def _ce(logits: torch.Tensor, target: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean over kept pixels of -log softmax(logits)[target], written out."""
    log_p = logits - logits.exp().sum(dim=1, keepdim=True).log()
    picked = torch.gather(log_p, 1, torch.where(keep, target, 0).unsqueeze(1)).squeeze(1)
    return -(picked * keep).sum() / keep.sum().clamp(min=1)


def _region_pool(features: torch.Tensor, grid: int) -> torch.Tensor:
    """B x C x grid^2 averages over the windows [floor(i H / g), ceil((i + 1) H / g))."""
    b, c, h, w = features.shape
    cells = []
    for i in range(grid):
        for j in range(grid):
            r0, r1 = (i * h) // grid, -((-(i + 1) * h) // grid)
            c0, c1 = (j * w) // grid, -((-(j + 1) * w) // grid)
            cells.append(features[:, :, r0:r1, c0:c1].mean(dim=(2, 3)))
    return torch.stack(cells, dim=2)


def _similarity(features: torch.Tensor) -> torch.Tensor:
    pooled = _region_pool(features, 7)
    pooled = pooled / pooled.pow(2).sum(dim=1, keepdim=True).sqrt()
    return pooled.transpose(1, 2) @ pooled  # B x 49 x 49 cosines


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_one_steps_terms_equal_the_formulas_written_out_from_raw_teacher_outputs(threshold):
    """L_sup, L_P, L_I and L_R of one step of the engine (live_targets then mgd_losses) against
    the method's formulas computed here from the teachers' and the student's raw outputs, with
    one forward per batch (the official code's): softmax, argmax, rounded confidence, mixing by
    the binary mask, global pooling, 7 x 7 region pooling and cosine similarity, each written out
    in this test rather than taken from mgd_ray.losses or engine/targets.py."""
    import copy

    from mgd_ray.engine.batches import Batch
    from mgd_ray.engine.mgd_step import mgd_losses
    from mgd_ray.engine.targets import live_targets

    torch.manual_seed(0)
    teachers = {}
    for index, role in enumerate(("deep", "wide")):
        torch.manual_seed(10 + index)
        teachers[role] = TinySeg(6, blocks=2)
        with torch.no_grad():
            teachers[role].head.weight.mul_(6.0)
        _frozen_train_mode(teachers[role])
    torch.manual_seed(3)
    student = TinySeg(6, blocks=2).train()
    b, s = 2, 32
    x_l, u0, u1 = (torch.randn(b, 3, s, s) for _ in range(3))
    y = torch.randint(0, 6, (b, s, s))
    y[:, :3] = 255  # ignored rows
    mask = torch.zeros(b, s, s, dtype=torch.int64)
    mask[0, 4:20, 8:30] = 1
    mask[1, 10:32, 0:12] = 1
    active = {"sup", "pixel", "semantic", "region"}

    engine_student = copy.deepcopy(student)
    targets = live_targets(teachers["deep"], teachers["wide"], x_l, u0, u1, mask, active)
    batch = Batch(x_l, y, u0, u1, mask)
    terms, stats = mgd_losses(engine_student, batch, targets, active, threshold)

    m = mask.unsqueeze(1).float()
    x_m = (1 - m) * u0 + m * u1
    with torch.no_grad():
        raw = {
            role: {n: t(x) for n, x in zip(("u0", "u1", "x_l", "x_m"), (u0, u1, x_l, x_m))}
            for role, t in teachers.items()
        }
    s_m, s_l = student(x_m), student(x_l)  # two forwards: BN statistics per batch

    def label_and_kept(logits):
        p = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
        confidence, label = p.max(dim=1)
        return label, torch.round(confidence * 255) / 255 > threshold

    pixel, kept, counted = [], 0, 0
    shows_u1 = mask.bool()
    for role in ("wide", "deep"):
        (a, keep_a), (c, keep_c) = (label_and_kept(raw[role][n]["logits"]) for n in ("u0", "u1"))
        label_m, keep_m = torch.where(shows_u1, c, a), torch.where(shows_u1, keep_c, keep_a)
        label_l, keep_l = label_and_kept(raw[role]["x_l"]["logits"])
        pixel += [_ce(s_m["logits"], label_m, keep_m), _ce(s_l["logits"], label_l, keep_l)]
        kept += int(keep_m.sum() + keep_l.sum())
        counted += 2 * b * s * s
    expected = {
        "sup": _ce(s_l["logits"], y, y != 255),
        "pixel": sum(pixel),
        "semantic": 2
        * (s_m["logits"].mean(dim=(2, 3)) - raw["deep"]["x_m"]["logits"].mean(dim=(2, 3)))
        .abs()
        .sum(dim=1)
        .mean(),
        "region": (
            (_similarity(s_m["features"]) - _similarity(raw["wide"]["x_m"]["features"])) ** 2
        ).mean(),
    }
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert float(terms[name].detach()) == pytest.approx(float(value), rel=1e-5, abs=1e-6), name
    assert float(stats["kept_fraction"]) == pytest.approx(kept / counted)
    if threshold:
        assert 0.05 < kept / counted < 0.95  # the threshold decides some pixels
