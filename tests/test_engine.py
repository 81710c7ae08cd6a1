"""The MGD engine: the step, optimiser, evaluation, checkpoints, resume and divergence.

Nets are tiny (a strided conv + BN) where a test is about the step rather than the networks, and
the real ResNet-18 DeepLabv3+ at 32 px where the real model matters; data is a few random
tensors."""

import copy
import dataclasses
import math
import os
import pickle
import subprocess
import sys
from functools import partial
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from mgd_ray.config import DataConfig, DistillConfig, LossWeights, OptimConfig, TeacherConfig
from mgd_ray.data import mix
from mgd_ray.engine import DivergedError, LocalContext, distill_student, evaluate, train_teacher
from mgd_ray.engine.batches import Batch
from mgd_ray.engine.builders import Builders
from mgd_ray.engine.checkpoint import atomic_save, load_checkpoint
from mgd_ray.engine.evaluate import window_starts
from mgd_ray.engine.mgd_step import active_terms, mgd_losses
from mgd_ray.engine.optim import build_optimizer, param_groups, poly_lr
from mgd_ray.engine.targets import freeze, live_targets, teacher_forward
from mgd_ray.losses import masked_cross_entropy, pseudo_label, weighted_total
from mgd_ray.models import build_model
from tests.tiny import TinySeg

C = 3  # classes in the tiny problems


class CountingTeacher(TinySeg):
    def __init__(self) -> None:
        super().__init__()
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


def _batch(b=2, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x_l, u0, u1 = (torch.randn(b, 3, s, s, generator=g) for _ in range(3))
    y = torch.randint(0, C, (b, s, s), generator=g)
    mask = torch.zeros(b, s, s)
    mask[:, : s // 2, : s // 2] = 1
    return Batch(x_l, y, u0, u1, mask)


def live_step(student, deep, wide, batch, weights, confidence_threshold=0.0):
    """The step with live teachers, as MGDTask.losses takes it without a targets store."""
    active = active_terms(weights)
    targets = live_targets(deep, wide, batch.x_l, batch.u0, batch.u1, batch.mask, active)
    return mgd_losses(student, batch, targets, active, confidence_threshold)


def _teachers():
    torch.manual_seed(1)
    deep, wide = CountingTeacher(), CountingTeacher()
    return freeze(deep), freeze(wide)


def test_supervised_only_runs_no_teacher_and_zero_weights_skip_teacher_inputs():
    student = TinySeg()
    batch = _batch()
    deep, wide = _teachers()
    terms, stats = live_step(student, deep, wide, batch, LossWeights(1, 0, 0, 0).as_dict())
    assert set(terms) == {"sup"} and deep.images_seen == wide.images_seen == 0
    assert stats["kept_fraction"].item() == 0.0
    terms, _ = live_step(student, None, None, batch, LossWeights(1, 0, 0, 0).as_dict())
    assert set(terms) == {"sup"}
    # Region off: the wide teacher sees u0, u1, x_l only (3B), the deep one also x_m (4B).
    terms, _ = live_step(student, deep, wide, batch, LossWeights(1, 1, 0.1, 0).as_dict())
    assert set(terms) == {"sup", "pixel", "semantic"}
    assert (deep.images_seen, wide.images_seen) == (8, 6)


def test_pixel_term_equals_four_separate_ce_terms():
    student = TinySeg()
    batch = _batch()
    x_l, u0, u1, mask = batch.x_l, batch.u0, batch.u1, batch.mask
    deep, wide = _teachers()
    pixel_only = {"sup": 0, "pixel": 1, "semantic": 0, "region": 0}
    terms, stats = live_step(student, deep, wide, batch, pixel_only)
    assert stats["kept_fraction"].item() == 1.0
    # train-mode BN of the combined forward differs from separate forwards; compare in eval
    student.eval()
    x_m = (1 - mask.unsqueeze(1)) * u0 + mask.unsqueeze(1) * u1
    with torch.no_grad():
        expected = 0.0
        s_l, s_m = student(x_l)["logits"], student(x_m)["logits"]
        for t in (wide, deep):  # separate teacher forwards: equal to the batched one in eval mode
            mixed = (1 - mask.unsqueeze(1)) * t(u0)["logits"] + mask.unsqueeze(1) * t(u1)["logits"]
            expected += F.cross_entropy(s_m, mixed.argmax(1)) + F.cross_entropy(
                s_l, t(x_l)["logits"].argmax(1)
            )
    terms, _ = live_step(student, deep, wide, batch, pixel_only)
    assert terms["pixel"].item() == pytest.approx(float(expected), rel=1e-5)


def test_threshold_one_keeps_nothing():
    student = TinySeg()
    deep, wide = _teachers()
    terms, stats = live_step(
        student,
        deep,
        wide,
        _batch(),
        {"sup": 1, "pixel": 1, "semantic": 0, "region": 0},
        confidence_threshold=1.0,
    )
    assert terms["pixel"].item() == 0.0 and stats["kept_fraction"].item() == 0.0


def test_batched_teacher_forward_equals_separate_forwards_in_eval_mode():
    teacher = freeze(TinySeg())
    with torch.no_grad():  # give BN non-trivial running statistics
        teacher.backbone[1].running_mean.uniform_(-1, 1)
        teacher.backbone[1].running_var.uniform_(0.5, 2)
    batch = _batch()
    x_l, u0 = batch.x_l, batch.u0
    batched = teacher_forward(teacher, {"u0": u0, "x_l": x_l})
    assert torch.allclose(batched["u0"]["logits"], teacher(u0)["logits"], atol=1e-5)
    assert torch.allclose(batched["x_l"]["features"], teacher(x_l)["features"], atol=1e-5)


def test_zero_weight_removes_the_term_gradient_in_the_step():
    torch.manual_seed(0)
    student = TinySeg()
    deep, wide = _teachers()
    batch = _batch()
    weights = {"sup": 1.0, "pixel": 0.0, "semantic": 0.0, "region": 5.0}
    terms, _ = live_step(student, deep, wide, batch, weights)
    weighted_total(terms, weights).backward()
    with_region = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    weights["region"] = 0.0
    terms, _ = live_step(student, deep, wide, batch, weights)
    assert "region" not in terms
    weighted_total(terms, weights).backward()
    terms_sup, _ = live_step(
        student, None, None, batch, {"sup": 1.0, "pixel": 0, "semantic": 0, "region": 0}
    )
    grads_sup = torch.autograd.grad(terms_sup["sup"], list(student.parameters()))
    for p, g, g_region in zip(student.parameters(), grads_sup, with_region):
        assert torch.allclose(p.grad, g, atol=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(with_region, grads_sup))


def test_real_student_optimisation_steps_reduce_the_loss():
    items = [TrainSet(12, size=32)[i] for i in range(12)]
    x, labels = torch.stack([a for a, _ in items]), torch.stack([b for _, b in items])
    x_l, y, u0, u1 = x[:4], labels[:4], x[4:8], x[8:]
    mask = torch.zeros(4, 32, 32)
    mask[:, :16, :16] = 1
    deep, wide = _teachers()
    torch.manual_seed(0)
    student = build_model("deeplabv3plus_resnet18", C)
    weights = {"sup": 1.0, "pixel": 1.0, "semantic": 0.002, "region": 100.0}
    # A small lr: the randomly initialised DeepLabv3+ head starts with large logits. (0.002 since
    # BN normalises x_l and x_m with their own statistics, as the official two forwards do.)
    optimizer = build_optimizer([student], OptimConfig(lr=0.002))
    losses = []
    for _ in range(8):
        terms, _ = live_step(student, deep, wide, Batch(x_l, y, u0, u1, mask), weights)
        total = weighted_total(terms, weights)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        losses.append(total.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_param_groups_and_poly_schedule():
    model = TinySeg()
    decay, no_decay = param_groups([model], 1e-4)
    assert {id(p) for p in decay["params"]} == {
        id(model.backbone[0].weight),
        id(model.head.weight),
    }
    assert {id(p) for p in no_decay["params"]} == {
        id(model.backbone[0].bias),
        id(model.backbone[1].weight),
        id(model.backbone[1].bias),
        id(model.head.bias),
    }
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert poly_lr(0.01, 0, 100) == 0.01
    assert poly_lr(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 100, 100) == 0.0
    assert poly_lr(0.01, 0, 100, warmup=10) == pytest.approx(0.001)  # linear warm-up: (i + 1) / 10
    assert poly_lr(0.01, 4, 100, warmup=10) == pytest.approx(0.01 * 0.5 * 0.96**0.9)
    assert poly_lr(0.01, 50, 100, warmup=10) == pytest.approx(0.01 * 0.5**0.9)
    with pytest.raises(ValueError, match="warmup_iterations=-1"):
        OptimConfig(warmup_iterations=-1)


class OneHotModel(nn.Module):
    """Reads the class id stored in channel 0 of the image: an exact segmenter if every pixel is
    covered."""

    def forward(self, x):
        return {
            "logits": F.one_hot(x[:, 0].round().long(), C).permute(0, 3, 1, 2).float() * 10.0,
            "features": x[:, :, ::4, ::4],
        }


class ValSet(Dataset):
    def __init__(self, sizes, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = [torch.randint(0, C, size, generator=g) for size in sizes]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        label = self.labels[i]
        image = torch.stack(
            [
                label.float(),
                torch.zeros_like(label, dtype=torch.float),
                torch.zeros_like(label, dtype=torch.float),
            ]
        )
        return image, label, f"img{i}"


def test_sliding_window_covers_the_whole_image():
    assert window_starts(37, 16, 11) == [0, 11, 21]
    assert window_starts(10, 16, 11) == [0]
    loader = torch.utils.data.DataLoader(ValSet([(37, 53), (10, 12), (16, 16)]), batch_size=1)
    result = evaluate(OneHotModel(), loader, C, crop_size=16, device=torch.device("cpu"))
    assert result["miou"] == 1.0 and result["iou"] == [1.0] * C


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    atomic_save({"a": torch.ones(3)}, str(path))

    def failing_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"a": torch.zeros(3)}, str(path))
    assert os.listdir(tmp_path) == ["state.pt"]
    assert torch.equal(load_checkpoint(str(path))["a"], torch.ones(3))


# ---- whole runs on a tiny in-memory problem -----------------------------------------------------


class TrainSet(Dataset):
    """Class = which colour channel is brightest in each 8 x 8 block: learnable by a small conv
    net."""

    def __init__(self, n, size=16, labeled=True, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = [
            torch.randint(0, C, (size // 8, size // 8), generator=g)
            .repeat_interleave(8, 0)
            .repeat_interleave(8, 1)
            for _ in range(n)
        ]
        self.labeled = labeled

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.load(i)

    def load(self, i, generator=None):
        """As SegmentationDataset.load: the random part (here noise) drawn from `generator`."""
        label = self.labels[i]
        noise = torch.randn(3, *label.shape, generator=generator)
        image = F.one_hot(label, C).permute(2, 0, 1).float() + 0.1 * noise
        return (image, label) if self.labeled else image


class TinyVal(TrainSet):
    def __getitem__(self, i):
        image, label = super().__getitem__(i)
        return image, label, str(i)


def _fake_data(cfg):
    return SimpleNamespace(
        labeled=TrainSet(8),
        unlabeled=TrainSet(16, labeled=False, seed=1),
        val=TinyVal(2, 24, seed=2),
        num_classes=C,
        labeled_ids=[],
        unlabeled_ids=[],
        split_dir="",
    )


def tiny_model(arch, num_classes, output_stride=None, backbone_weights=None, width=8):
    return TinySeg(num_classes, width)


@pytest.fixture
def tiny_world(tmp_path):
    teacher_path = str(tmp_path / "teacher.pt")
    torch.manual_seed(3)
    atomic_save(TinySeg().state_dict(), teacher_path)
    data = DataConfig(crop_size=16, batch_size=2, num_workers=0)
    builders = Builders(model=tiny_model, datasets=_fake_data)
    return SimpleNamespace(tmp=tmp_path, teacher=teacher_path, data=data, builders=builders)


def _distill_cfg(world, iterations, **kw):
    return DistillConfig(
        teacher_deep_checkpoint=world.teacher,
        teacher_wide_checkpoint=world.teacher,
        data=world.data,
        iterations=iterations,
        eval_every=2,
        optim=OptimConfig(lr=0.01),
        **kw,
    )


def test_distill_reports_checkpoints_and_resumes(tiny_world):
    ctx = LocalContext(str(tiny_world.tmp / "run"), verbose=False)
    final = distill_student(_distill_cfg(tiny_world, 4), ctx, tiny_world.builders)
    assert [m["iteration"] for m in ctx.history] == [2, 4] and [
        m["done"] for m in ctx.history
    ] == [False, True]
    for key in (
        "miou",
        "loss",
        "loss_sup",
        "loss_pixel",
        "loss_semantic",
        "loss_region",
        "kept_fraction",
        "lr",
        "iter_per_s",
        "data_wait_share",
    ):
        assert math.isfinite(final[key]), key
    assert final["kept_fraction"] == 1.0 and final["loss_pixel"] > 0
    folder = ctx.latest_checkpoint()
    TinySeg().load_state_dict(load_checkpoint(os.path.join(folder, "model.pt")))
    assert load_checkpoint(os.path.join(folder, "state.pt"))["iteration"] == 4
    # A longer budget on the same context resumes at iteration 4 and keeps counting.
    ctx2 = LocalContext(ctx.output_dir, verbose=False)
    distill_student(_distill_cfg(tiny_world, 6), ctx2, tiny_world.builders)
    assert [m["iteration"] for m in ctx2.history] == [6]
    assert ctx2.history[0]["lr"] == pytest.approx(poly_lr(0.01, 5, 6))


def test_supervised_only_distill_needs_no_teacher_checkpoint(tiny_world):
    cfg = DistillConfig(
        data=tiny_world.data, iterations=2, eval_every=2, weights=LossWeights(1, 0, 0, 0)
    )
    final = distill_student(
        cfg, LocalContext(str(tiny_world.tmp / "sup"), verbose=False), tiny_world.builders
    )
    assert final["loss_pixel"] == 0.0 and final["kept_fraction"] == 0.0 and final["loss_sup"] > 0
    with pytest.raises(ValueError, match="teacher_deep_checkpoint is required"):
        distill_student(
            DistillConfig(data=tiny_world.data, iterations=2),
            LocalContext(str(tiny_world.tmp / "x"), verbose=False),
            tiny_world.builders,
        )


def test_nan_loss_raises_diverged_error(tiny_world, monkeypatch):
    def nan_model(arch, num_classes, output_stride=None, backbone_weights=None):
        model = TinySeg(num_classes)
        with torch.no_grad():
            model.head.bias.fill_(float("nan"))
        return model

    builders = dataclasses.replace(tiny_world.builders, model=nan_model)
    cfg = DistillConfig(
        data=tiny_world.data, iterations=3, eval_every=3, weights=LossWeights(1, 0, 0, 0)
    )
    ctx = LocalContext(str(tiny_world.tmp / "nan"), verbose=False)
    with pytest.raises(DivergedError, match="diverged at iteration 1: loss=nan") as info:
        distill_student(cfg, ctx, builders)
    assert ctx.history == [] and ctx.latest_checkpoint() is None
    # The fields say where and how, without reading the message; they survive pickling (Ray).
    error = pickle.loads(pickle.dumps(info.value))
    assert error.iteration == 1 and set(error.losses) == {"loss", "loss_sup"}
    assert math.isnan(error.losses["loss"]) and str(error) == str(info.value)


class Interrupt(Exception):
    pass


def _stop_at(iteration):
    """An on_report that kills the run once the checkpoint of `iteration` is kept."""

    def on_report(metrics):
        if metrics["iteration"] == iteration:
            raise Interrupt

    return on_report


def _without_time(history):
    return [{k: v for k, v in m.items() if k != "time"} for m in history]


@pytest.fixture
def loaded_optimizer_states(monkeypatch):
    """Copies of every optimizer state dict a run loads (SGD.load_state_dict, spied; copies, since
    the optimizer then steps the loaded momentum buffers in place)."""
    loaded, original = [], torch.optim.SGD.load_state_dict

    def spy(self, state_dict):
        loaded.append(copy.deepcopy(state_dict))
        return original(self, state_dict)

    monkeypatch.setattr(torch.optim.SGD, "load_state_dict", spy)
    return loaded


def test_finished_run_keeps_no_optimizer_state_and_resumes(
    tiny_world, monkeypatch, loaded_optimizer_states
):
    # A wide net, so that SGD's momentum (one buffer per trainable weight) is most of an unfinished
    # state.pt.
    wide = dataclasses.replace(tiny_world.builders, model=partial(tiny_model, width=1024))
    cfg = DistillConfig(
        data=tiny_world.data, iterations=4, eval_every=2, weights=LossWeights(1, 0, 0, 0)
    )
    out = str(tiny_world.tmp / "sizes")
    sizes = {}

    def measure(metrics):  # the sizes of the checkpoint just kept, then a kill after iteration 2
        files = ("state.pt", "model.pt")
        sizes[metrics["iteration"]] = {
            f: os.path.getsize(os.path.join(out, "checkpoint", f)) for f in files
        }
        if len(sizes) == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill_student(cfg, LocalContext(out, verbose=False, on_report=measure), wide)
    saved = load_checkpoint(os.path.join(out, "checkpoint", "state.pt"))
    assert saved["iteration"] == 2 and not saved["metrics"]["done"] and "optimizer" in saved

    # Resuming the unfinished run restores its optimizer (the momentum saved at iteration 2).
    ctx = LocalContext(out, verbose=False, on_report=measure)
    final = distill_student(cfg, ctx, wide)
    assert [m["iteration"] for m in ctx.history] == [4] and final["done"]
    assert len(loaded_optimizer_states) == 1
    momentum = {i: s["momentum_buffer"] for i, s in saved["optimizer"]["state"].items()}
    loaded = loaded_optimizer_states[0]["state"]
    assert (
        loaded.keys() == momentum.keys() and len(momentum) == 6
    )  # conv, BN and head weights and biases
    assert all(torch.equal(loaded[i]["momentum_buffer"], m) for i, m in momentum.items())

    # The finished run's state.pt holds counters, RNG and metrics, not the optimizer: far smaller
    # than the weights, where the unfinished one was larger than them (weights-sized momentum + the
    # rest).
    state = load_checkpoint(os.path.join(ctx.latest_checkpoint(), "state.pt"))
    assert "optimizer" not in state and state["iteration"] == 4 and state["metrics"] == final
    assert (
        sizes[2]["state.pt"] > sizes[2]["model.pt"] > 110_000
    )  # 1024 x 3 x 3 x 3 fp32 conv weights: 110,592 bytes
    assert sizes[4]["state.pt"] < sizes[4]["model.pt"] / 4

    # Resuming the finished run only reports its final metrics again, with the same weights.
    model = load_checkpoint(os.path.join(ctx.latest_checkpoint(), "model.pt"))
    again = LocalContext(out, verbose=False)
    assert distill_student(cfg, again, wide) == final and _without_time(again.history) == [final]
    assert len(loaded_optimizer_states) == 1  # nothing to load this time
    reloaded = load_checkpoint(os.path.join(again.latest_checkpoint(), "model.pt"))
    assert all(torch.equal(model[k], reloaded[k]) for k in model)


def test_finished_teacher_run_keeps_both_branches_but_no_optimizer(
    tiny_world, loaded_optimizer_states
):
    cfg = TeacherConfig(
        data=tiny_world.data, iterations=4, eval_every=2, optim=OptimConfig(lr=0.01)
    )
    out = str(tiny_world.tmp / "teacher_resume")
    with pytest.raises(Interrupt):
        train_teacher(
            cfg, LocalContext(out, verbose=False, on_report=_stop_at(2)), tiny_world.builders
        )
    ctx = LocalContext(out, verbose=False)
    final = train_teacher(cfg, ctx, tiny_world.builders)
    assert [m["iteration"] for m in ctx.history] == [4] and len(loaded_optimizer_states) == 1
    state = load_checkpoint(os.path.join(ctx.latest_checkpoint(), "state.pt"))
    assert "optimizer" not in state and len(state["branches"]) == 2
    again = LocalContext(out, verbose=False)
    assert (
        train_teacher(cfg, again, tiny_world.builders) == final
        and len(loaded_optimizer_states) == 1
    )
    model = load_checkpoint(os.path.join(again.latest_checkpoint(), "model.pt"))
    assert all(torch.equal(model[k], state["branches"][0][k]) for k in model)


class FixedVal(TinyVal):
    """TinyVal whose noise is the same at every read, so that a score can be computed again."""

    def __getitem__(self, i):
        image, label = self.load(i, torch.Generator().manual_seed(i))
        return image, label, str(i)


def test_a_teacher_run_keeps_and_scores_its_first_branch_as_the_official_code(tiny_world):
    """The official evaluation runs CPS branch 1 and its student loads each teacher's branch 1:
    the kept branch is the first one, whichever scores higher on val."""
    from mgd_ray.engine.evaluate import run_miou

    def fixed_data(cfg):
        return SimpleNamespace(**{**vars(_fake_data(cfg)), "val": FixedVal(2, 24, seed=2)})

    cfg = TeacherConfig(
        data=tiny_world.data, iterations=3, eval_every=3, optim=OptimConfig(lr=0.01)
    )
    ctx = LocalContext(str(tiny_world.tmp / "teacher"), verbose=False)
    final = train_teacher(cfg, ctx, Builders(model=tiny_model, datasets=fixed_data))
    assert final["done"] and final["iteration"] == 3
    assert "branch" not in final and "miou_branch1" not in final  # one branch is evaluated
    state = load_checkpoint(os.path.join(ctx.latest_checkpoint(), "state.pt"))
    model = load_checkpoint(os.path.join(ctx.latest_checkpoint(), "model.pt"))
    assert all(torch.equal(model[k], state["branches"][0][k]) for k in model)
    # "miou" is the first branch's val score, computed here again from the saved weights; the
    # second branch scores differently (higher, with these seeds), and is not the teacher
    scores = []
    for branch in state["branches"]:
        network = tiny_model(cfg.arch, C)
        network.load_state_dict(branch)
        val = torch.utils.data.DataLoader(FixedVal(2, 24, seed=2), batch_size=1)
        scores.append(run_miou(network, val, C, cfg, torch.device("cpu")))
    assert final["miou"] == pytest.approx(scores[0]) and scores[1] != pytest.approx(scores[0])


def test_mix_and_pseudo_label_of_the_mix():
    a, b = torch.zeros(1, C, 2, 2), torch.zeros(1, C, 2, 2)
    a[:, 0], b[:, 2] = 1.0, 1.0
    mask = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    label, _ = pseudo_label(mix(mask, a, b))
    assert label.tolist() == [[[0, 2], [2, 0]]]
    assert masked_cross_entropy(torch.zeros(1, C, 2, 2), label).item() == pytest.approx(
        math.log(C)
    )


def test_runner_rejects_bad_options_before_any_work(tmp_path):
    out = tmp_path / "runner"
    for argv, expected in (
        (["--iterations", "0"], "argument --iterations: expected a positive integer, got 0"),
        (["--protocol", "1/3"], "protocol '1/3': expected one of"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "mgd_ray.engine.runner", *argv, "--output-dir", str(out)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and expected in done.stderr, done.stderr
    assert not out.exists()  # nothing was trained or written


def test_runner_plan_pairs_students_on_one_split_and_summarises_seeds(tmp_path):
    from mgd_ray.engine.runner import format_results, get_args_parser, plan

    args = get_args_parser().parse_args(
        ["--seed", "3", "--student-seeds", "0", "1", "1", "--output-dir", str(tmp_path)]
    )
    teachers, students = plan(args)
    # A repeated seed is run once; every student and teacher reads the split of --seed.
    assert list(students) == [("supervised", 0), ("mgd", 0), ("supervised", 1), ("mgd", 1)]
    assert {cfg.data.seed for cfg in [*students.values(), *teachers.values()]} == {3}
    assert students["supervised", 1].weights.pixel == 0 and students["mgd", 1].weights.pixel == 1.0
    rows = [
        {"student": "s", "variant": v, "seed": seed, "miou": m}
        for seed, v, m in (
            (0, "supervised", 0.20),
            (0, "mgd", 0.25),
            (1, "supervised", 0.30),
            (1, "mgd", 0.29),
        )
    ]
    text = format_results(rows, args)
    # supervised 0.25 +- 0.0707 (sample std of 0.2, 0.3), mgd 0.27 +- 0.0283, gains +0.05
    # and -0.01.
    assert "supervised   mean 0.2500 +- 0.0707 over 2 seeds" in text
    assert "mgd          mean 0.2700 +- 0.0283 over 2 seeds" in text
    assert "MGD - supervised: mean +0.0200, ahead on 1 of 2 seeds" in text


def test_runner_end_to_end_one_iteration(tmp_path, capsys):
    from mgd_ray.engine.runner import get_args_parser, main, plan, train_or_reuse_teacher

    out = tmp_path / "runner"
    args = get_args_parser().parse_args(
        [
            "--teacher-iterations",
            "1",
            "--iterations",
            "1",
            "--student-seeds",
            "0",
            "--output-dir",
            str(out),
            "--quiet",
        ]
    )
    rows = main(args)
    assert [(r["variant"], r["seed"]) for r in rows] == [("supervised", 0), ("mgd", 0)]
    assert all(0.0 <= r["miou"] <= 1.0 for r in rows)
    for role in ("deep", "wide"):
        assert (out / f"teacher_{role}.pt").is_file()
        # The spent resume checkpoint is gone, the metrics stay.
        assert not (out / f"teacher_{role}_run" / "checkpoint").exists()
        assert (out / f"teacher_{role}_run" / "metrics.jsonl").is_file()
    assert (out / "student_mgd-seed0" / "checkpoint" / "model.pt").is_file()
    assert "deeplabv3plus_resnet18       mgd             0" in capsys.readouterr().out
    # A second run reuses a saved teacher instead of training it again.
    teachers, _ = plan(args)
    train_or_reuse_teacher("deep", teachers["deep"], args, torch.device("cpu"))
    assert "reusing teacher_deep" in capsys.readouterr().out


def test_cps_losses_normalise_each_batch_as_the_official_separate_forwards():
    """One batched forward per branch with per-batch BN statistics gives the losses of the official
    separate forwards (u0, u1; then x_m, x_l), computed here the official way on copies."""
    from mgd_ray.engine.teacher import cps_losses
    from mgd_ray.losses import supervised_loss

    torch.manual_seed(0)
    branches = [build_model("deeplabv3plus_resnet18", 3).train() for _ in range(2)]
    reference = copy.deepcopy(branches)
    x_l, u0, u1 = (torch.randn(2, 3, 32, 32) for _ in range(3))
    y = torch.randint(0, 3, (2, 32, 32))
    mask = (torch.rand(2, 32, 32) > 0.5).long()
    got = cps_losses(branches, x_l, y, u0, u1, mask)

    with torch.no_grad():
        pseudo = [pseudo_label(mix(mask, b(u0)["logits"], b(u1)["logits"]))[0] for b in reference]
    x_m = mix(mask, u0, u1)
    sup = cps = 0.0
    for index, branch in enumerate(reference):
        s_m, s_l = branch(x_m)["logits"], branch(x_l)["logits"]
        sup = sup + supervised_loss(s_l, y)
        cps = cps + masked_cross_entropy(s_m, pseudo[1 - index])
    assert torch.allclose(got["sup"], sup, atol=1e-5)
    assert torch.allclose(got["cps"], cps, atol=1e-5)
    # and the plain joint forward it replaced does not (BN statistics over both batches differ)
    with torch.no_grad():
        joint = reference[0](torch.cat([x_m, x_l]))["logits"][2:]
        separate = copy.deepcopy(reference[0])(x_l)["logits"]
    assert not torch.allclose(joint, separate, atol=1e-3)
