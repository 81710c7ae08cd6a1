"""BN per named batch inside one batched forward (mgd_ray.engine.batch_groups): the same outputs,
gradients and running statistics as one forward per batch, the official way."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mgd_ray.config import LossWeights
from mgd_ray.engine.batch_groups import batch_groups
from mgd_ray.engine.batches import Batch
from mgd_ray.engine.mgd_step import active_terms, mgd_losses
from mgd_ray.engine.targets import freeze, live_targets, teacher_forward
from mgd_ray.models import build_model


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, stride=2, padding=1),
        nn.BatchNorm2d(4),
    )


def batches(count: int, b: int = 3, s: int = 12, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Different means per batch, so that shared statistics would visibly differ.
    return [torch.randn(b, 3, s, s, generator=g) * (1 + i) + 2 * i for i in range(count)]


def test_grouped_forward_equals_separate_forwards_outputs_gradients_and_running_stats():
    separate, grouped = small_net(), small_net()
    xs = batches(2)
    out_separate = torch.cat([separate(x) for x in xs])
    with batch_groups(grouped, 2):
        out_grouped = grouped(torch.cat(xs))
    assert torch.allclose(out_grouped, out_separate, atol=1e-5)
    # The plain batched forward would differ: one set of statistics over both batches.
    assert not torch.allclose(small_net()(torch.cat(xs)), out_separate, atol=1e-3)
    weights = torch.randn_like(out_separate)
    (out_separate * weights).sum().backward()
    (out_grouped * weights).sum().backward()
    for p_sep, p_grp in zip(separate.parameters(), grouped.parameters()):
        assert torch.allclose(p_grp.grad, p_sep.grad, atol=1e-4)
    for name in ("1", "4"):
        bn_sep, bn_grp = separate.get_submodule(name), grouped.get_submodule(name)
        assert torch.allclose(bn_grp.running_mean, bn_sep.running_mean, atol=1e-6)
        assert torch.allclose(bn_grp.running_var, bn_sep.running_var, atol=1e-5)
        assert bn_grp.num_batches_tracked.item() == bn_sep.num_batches_tracked.item() == 2
    # Outside the block the module is the plain BN again.
    assert "forward" not in grouped.get_submodule("1").__dict__


def test_train_mode_batched_teacher_equals_separate_forwards_on_a_real_network():
    teacher = freeze(build_model("deeplabv3plus_resnet18", 5), train_mode=True)
    before = copy.deepcopy(teacher.state_dict())
    images = dict(zip(("u0", "u1", "x_l", "x_m"), batches(4, b=2, s=32, seed=1)))
    batched = teacher_forward(teacher, images)
    with torch.no_grad():
        for name, x in images.items():
            separate = teacher(x)
            for key in ("logits", "features"):
                assert batched[name][key].shape == separate[key].shape
                assert torch.allclose(batched[name][key], separate[key], atol=1e-4), (name, key)
    # Frozen: momentum 0, so the running statistics (and every weight) stay as they were.
    for key, value in teacher.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, before[key]), key


def test_student_bn_statistics_per_batch_as_in_two_official_forwards():
    torch.manual_seed(0)
    student = build_model("deeplabv3plus_resnet18", 5)
    for module in student.modules():
        if isinstance(module, nn.Dropout):
            module.p = (
                0.0  # random drops would differ between the two ways (the official head has none)
            )
    reference = copy.deepcopy(student)
    x_l, u0, u1 = batches(3, b=2, s=32, seed=2)
    y = torch.randint(0, 5, (2, 32, 32))
    mask = torch.zeros(2, 32, 32)
    mask[:, :16] = 1
    weights = LossWeights(sup=1.0, pixel=0.0, semantic=0.0, region=1.0).as_dict()
    teacher = freeze(build_model("deeplabv3plus_resnet18", 5))
    targets = live_targets(None, teacher, x_l, u0, u1, mask, active_terms(weights))
    terms, _ = mgd_losses(student, Batch(x_l, y, u0, u1, mask), targets, active_terms(weights))
    x_m = (1 - mask[:, None]) * u0 + mask[:, None] * u1
    reference(
        x_m
    )  # the official order: mixed first (it moves the running statistics), then labeled
    s_l = reference(x_l)
    expected_sup = nn.functional.cross_entropy(s_l["logits"], y)
    assert terms["sup"].item() == pytest.approx(expected_sup.item(), rel=1e-4)
    for name, bn in student.named_modules():
        if isinstance(bn, nn.BatchNorm2d):
            ref = reference.get_submodule(name)
            assert torch.allclose(bn.running_mean, ref.running_mean, atol=1e-5), name


def _synced_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = small_net()
        xs = batches(2, b=2, seed=10 + rank)
        with batch_groups(net, 2, sync=True):
            out = net(torch.cat(xs))
        out.sum().backward()  # the all-gather is differentiable: backward runs on every rank
        torch.save({"out": out.detach(), "xs": xs}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_synced_groups_normalise_each_batch_over_all_ranks(tmp_path):
    """On several ranks each named batch is normalised over its images on every rank, as the
    official SyncBatchNorm normalises one forward's batch over all GPUs."""
    import torch.multiprocessing as mp

    mp.spawn(_synced_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    net = small_net()
    for g in range(2):
        with torch.no_grad():
            expected = net(
                torch.cat([ranks[0]["xs"][g], ranks[1]["xs"][g]])
            )  # one BN batch over both ranks
        for r in range(2):
            got = ranks[r]["out"][2 * g : 2 * g + 2]
            assert torch.allclose(got, expected[2 * r : 2 * r + 2], atol=1e-5), (g, r)


# One pass and per call: the same numbers as separate forwards (the official way), whichever runs.


def separate_forwards(
    net: nn.Module, xs: list[torch.Tensor], weights: torch.Tensor
) -> torch.Tensor:
    out = torch.cat([net(x) for x in xs])
    (out * weights).sum().backward()
    return out


def grouped_forward(
    net: nn.Module,
    xs: list[torch.Tensor],
    weights: torch.Tensor,
    impl: str,
    memory_format=torch.contiguous_format,
) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.cat(xs).contiguous(memory_format=memory_format).requires_grad_(True)
    with batch_groups(net, len(xs), impl=impl):
        out = net(x)
    (out * weights).sum().backward()
    return out, x.grad


@pytest.mark.parametrize("momentum", [0.1, None])  # None: cumulative average, as PyTorch's
@pytest.mark.parametrize("impl", ["calls", "one_pass"])
def test_each_impl_equals_separate_forwards_outputs_gradients_and_running_stats(impl, momentum):
    separate, grouped = small_net(), small_net()
    for net in (separate, grouped):
        for bn in (net[1], net[4]):
            bn.momentum = momentum
    xs = batches(3)
    weights = torch.randn(9, 4, 6, 6, generator=torch.Generator().manual_seed(5))
    inputs = [x.clone().requires_grad_(True) for x in xs]
    expected = separate_forwards(separate, inputs, weights)
    for step in range(2):  # twice: the second momentum steps start from moved statistics
        out, x_grad = grouped_forward(grouped, xs, weights, impl)
        if step == 0:
            assert torch.allclose(out, expected, atol=1e-5)
            assert torch.allclose(x_grad, torch.cat([x.grad for x in inputs]), atol=1e-5)
            for p_sep, p_grp in zip(separate.parameters(), grouped.parameters()):
                assert torch.allclose(p_grp.grad, p_sep.grad, atol=1e-4)
        else:
            separate_forwards(separate, xs, weights)
    for name in ("1", "4"):
        bn_sep, bn_grp = separate.get_submodule(name), grouped.get_submodule(name)
        assert torch.allclose(bn_grp.running_mean, bn_sep.running_mean, atol=1e-6)
        assert torch.allclose(bn_grp.running_var, bn_sep.running_var, atol=1e-5)
        assert bn_grp.num_batches_tracked.item() == bn_sep.num_batches_tracked.item() == 6


@pytest.mark.parametrize("impl", ["calls", "one_pass"])
def test_frozen_train_mode_teacher_writes_no_state(impl):
    teacher, reference = freeze(small_net(), train_mode=True), freeze(small_net(), train_mode=True)
    before = copy.deepcopy(teacher.state_dict())
    xs = batches(4, b=2)
    with torch.no_grad(), batch_groups(teacher, 4, impl=impl):
        out = teacher(torch.cat(xs))
        expected = torch.cat([reference(x) for x in xs])
    assert torch.allclose(out, expected, atol=1e-5)
    for key, value in teacher.state_dict().items():  # num_batches_tracked too: not even counted
        assert torch.equal(value, before[key]), key


def test_one_pass_keeps_channels_last_and_equals_separate_forwards():
    separate, grouped = small_net(), small_net().to(memory_format=torch.channels_last)
    xs = batches(2)
    weights = torch.randn(6, 4, 6, 6, generator=torch.Generator().manual_seed(6))
    inputs = [x.clone().requires_grad_(True) for x in xs]
    expected = separate_forwards(separate, inputs, weights)
    out, x_grad = grouped_forward(grouped, xs, weights, "one_pass", torch.channels_last)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(x_grad, torch.cat([x.grad for x in inputs]), atol=1e-5)
    for p_sep, p_grp in zip(separate.parameters(), grouped.parameters()):
        assert torch.allclose(p_grp.grad, p_sep.grad, atol=1e-4)
    bn = nn.BatchNorm2d(3)
    with batch_groups(bn, 2, impl="one_pass"):
        y = bn(torch.cat(xs).contiguous(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)  # the next conv needs no copy


def test_one_pass_float64_is_exact_and_float32_agrees():
    xs = batches(2, seed=7)
    net64 = small_net().double()
    with torch.no_grad():
        expected = torch.cat([net64(x.double()) for x in xs])
        with batch_groups(small_net().double(), 2, impl="one_pass") as grouped:
            out64 = grouped(torch.cat(xs).double())
        with batch_groups(small_net(), 2, impl="one_pass") as grouped:
            out32 = grouped(torch.cat(xs))
    assert out64.dtype == torch.float64  # statistics in the input's precision when wider than fp32
    assert torch.allclose(out64, expected, atol=1e-12)
    assert torch.allclose(out32.double(), expected, atol=1e-5)


def test_one_pass_statistics_of_bfloat16_input_are_float32():
    """Far from zero, bf16 cannot hold a variance: sums in bf16 would be wrong by far more than the
    output's own bf16 rounding."""
    g = torch.Generator().manual_seed(8)
    xs = [(torch.randn(4, 5, 8, 8, generator=g) * 0.5 + 30 * (i + 1)).bfloat16() for i in range(2)]
    bn, reference = nn.BatchNorm2d(5), nn.BatchNorm2d(5)
    with torch.no_grad(), batch_groups(bn, 2, impl="one_pass"):
        out = bn(torch.cat(xs))
        expected = torch.cat([reference(x.float()) for x in xs])
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), expected, atol=0.05)
    assert torch.allclose(bn.running_var, reference.running_var, rtol=1e-4)


@pytest.mark.parametrize("impl", [None, "calls", "one_pass", "joint"])  # None: the default
def test_uneven_groups_are_an_error_in_every_impl(impl):
    options = {} if impl is None else {"impl": impl}
    with batch_groups(small_net(), 2, **options) as net:
        with pytest.raises(ValueError, match="cannot be split into 2"):
            net(torch.randn(3, 3, 8, 8))


def test_unknown_impl_is_an_error():
    with pytest.raises(ValueError, match="impl='fused'"):
        with batch_groups(small_net(), 2, impl="fused"):
            pass


def test_joint_is_the_plain_forward_over_the_whole_batch():
    grouped, plain = small_net(), small_net()
    x = torch.cat(batches(2))
    with batch_groups(grouped, 2, impl="joint"):
        out = grouped(x)
    assert torch.equal(out, plain(x))
    assert torch.equal(grouped[1].running_mean, plain[1].running_mean)


def test_outside_the_block_a_batch_norm_is_the_plain_one_and_blocks_nest():
    grouped, plain = small_net(), small_net()
    xs = batches(2)
    with batch_groups(grouped, 2, impl="one_pass"):
        grouped(torch.cat(xs))
    plain(xs[0])
    plain(xs[1])
    out, expected = grouped(torch.cat(xs)), plain(torch.cat(xs))  # one batch: joint statistics
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(grouped[1].running_mean, plain[1].running_mean, atol=1e-6)
    assert grouped[1].num_batches_tracked.item() == plain[1].num_batches_tracked.item() == 3
    assert isinstance(grouped[1], nn.BatchNorm2d) and "forward" not in grouped[1].__dict__
    with batch_groups(grouped, 2, impl="calls"):
        with batch_groups(grouped, 4, impl="one_pass"):
            assert (grouped[1].bn_groups, grouped[1].bn_groups_impl) == (4, "one_pass")
        assert (grouped[1].bn_groups, grouped[1].bn_groups_impl) == (2, "calls")
    assert (grouped[1].bn_groups, grouped[1].bn_groups_impl) == (1, None)


def test_a_model_that_ran_in_a_block_still_pickles(tmp_path):
    net = small_net()
    with batch_groups(net, 2):
        net(torch.cat(batches(2)))
    torch.save(net, tmp_path / "net.pt")
    loaded = torch.load(tmp_path / "net.pt", weights_only=False)
    x = torch.cat(batches(2, seed=3))
    assert torch.equal(loaded.eval()(x), net.eval()(x))


def _synced_one_pass_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        net = small_net()
        xs = batches(2, b=2, seed=20 + rank)
        with batch_groups(net, 2, sync=True, impl="calls"):  # on several ranks: one pass anyway
            out = net(torch.cat(xs))
        out.sum().backward()
        bn = net[1]
        torch.save(
            {
                "grads": [p.grad for p in net.parameters()],
                "xs": xs,
                "running": [bn.running_mean, bn.running_var, bn.num_batches_tracked],
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_synced_groups_give_the_gradients_and_running_stats_of_one_batch_over_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_synced_one_pass_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    reference = small_net()
    for g in range(2):  # each named batch over both ranks, as one SyncBatchNorm forward
        reference(torch.cat([ranks[0]["xs"][g], ranks[1]["xs"][g]])).sum().backward()
    for i, p in enumerate(reference.parameters()):  # DDP sums (then averages) the ranks' gradients
        assert torch.allclose(ranks[0]["grads"][i] + ranks[1]["grads"][i], p.grad, atol=1e-3), i
    for r in range(2):
        mean, var, count = ranks[r]["running"]
        assert torch.allclose(mean, reference[1].running_mean, atol=1e-6)
        assert torch.allclose(var, reference[1].running_var, atol=1e-5)
        assert count.item() == 2
