"""Compiled forwards (mgd_ray.engine.device.compile_for_device) with per-batch BN (batch_groups):
the same numbers as eager ones, traced once and reused block after block, and on only where asked.

CPU only. The frozen teacher is a real network traced by the "aot_eager" backend (dynamo and
AOT autograd, no code generation): inductor's C++ code generation for a DeepLabv3+ takes ~40 s
on 2 cores, and what this test guards is the tracing (no graph break, no recompile per block).
Inductor itself compiles a small conv-BN net, forward and backward."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch._dynamo.utils import counters

from mgd_ray.config import DistillConfig, TeacherConfig
from mgd_ray.engine.batch_groups import batch_groups, default_impl
from mgd_ray.engine.device import compile_for_device
from mgd_ray.engine.targets import freeze
from mgd_ray.models import build_model

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def named_batches(count: int, b: int, s: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, s, s, generator=g) * (1 + i) + i for i in range(count)]


def test_compiled_frozen_teacher_equals_eager_and_is_traced_once():
    torch.manual_seed(0)
    teacher = freeze(build_model("deeplabv3plus_resnet18", 3), train_mode=True)
    first, second = torch.cat(named_batches(4, 2, 32)), torch.cat(named_batches(4, 2, 32, seed=1))
    with torch.no_grad():
        # The official way: a forward per named batch.
        expected = [[teacher(x) for x in xs.chunk(4)] for xs in (first, second)]
        before = copy.deepcopy(teacher.state_dict())
        compile_for_device(teacher, CPU, enabled=True, frozen=True, backend="aot_eager")
        outs = []
        for x in (first, second):  # two blocks, as two steps
            with batch_groups(teacher, 4):
                outs.append(teacher(x))
    for out, separate in zip(outs, expected):
        for key in ("logits", "features"):
            assert torch.allclose(out[key], torch.cat([o[key] for o in separate]), atol=1e-4), key
    assert counters["stats"]["unique_graphs"] == 1  # the second block reused the first trace
    assert not counters["graph_break"]
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


class ConvBNNet(nn.Module):
    """A forward defined outside torch, as mgd_ray's networks: dynamo starts no trace in torch's
    own modules, so a bare nn.Sequential compiled in place would stay eager."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 4, 3, stride=2, padding=1),
            nn.BatchNorm2d(4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_inductor_compiled_student_equals_separate_forwards():
    separate, compiled = ConvBNNet(), ConvBNNet()
    compile_for_device(compiled, CPU, enabled=True)
    xs = named_batches(2, 3, 12)
    weights = torch.randn(6, 4, 6, 6, generator=torch.Generator().manual_seed(3))
    for _ in range(2):  # two steps: the second starts from the moved running statistics
        expected = torch.cat([separate(x) for x in xs])
        (expected * weights).sum().backward()
        with batch_groups(compiled, 2):
            out = compiled(torch.cat(xs))
        (out * weights).sum().backward()
    assert torch.allclose(out, expected, atol=1e-4)
    for p_sep, p_cmp in zip(separate.parameters(), compiled.parameters()):
        assert torch.allclose(p_cmp.grad, p_sep.grad, atol=1e-3)
    for bn_sep, bn_cmp in zip(separate.layers[1::3], compiled.layers[1::3]):
        assert torch.allclose(bn_cmp.running_mean, bn_sep.running_mean, atol=1e-5)
        assert torch.allclose(bn_cmp.running_var, bn_sep.running_var, atol=1e-4)
        assert bn_cmp.num_batches_tracked.item() == 4
    assert counters["stats"]["unique_graphs"] == 1


def test_a_compiled_forward_takes_the_one_pass_batch_norm():
    traced = torch.compile(lambda x: x + len(default_impl()), backend="eager")
    assert traced(torch.zeros(1)).item() == len("one_pass")
    assert default_impl() == "calls"


def compile_calls(module: nn.Module, monkeypatch) -> list[dict]:
    calls = []
    monkeypatch.setattr(module, "compile", lambda **kwargs: calls.append(kwargs))
    return calls


@pytest.mark.parametrize(
    "device, enabled, frozen, expected",
    [
        ("cpu", None, True, None),  # off on CPU unless forced
        ("cpu", True, True, {"backend": "inductor", "mode": None}),  # no CUDA graphs off CUDA
        ("cuda", None, True, {"backend": "inductor", "mode": "reduce-overhead"}),
        ("cuda", None, False, {"backend": "inductor", "mode": None}),
        ("cuda", False, True, None),
    ],
)
def test_compile_is_on_for_cuda_and_captures_only_frozen_teachers(
    device, enabled, frozen, expected, monkeypatch
):
    module = nn.Linear(2, 2)
    calls = compile_calls(module, monkeypatch)  # the decision only: nothing compiles here
    assert compile_for_device(module, torch.device(device), enabled, frozen) is module
    assert calls == ([] if expected is None else [expected])


@pytest.mark.parametrize("version, warns", [("2.10.0+cu130", True), ("2.13.0", False)])
def test_cuda_graph_capture_warns_on_the_reported_torch_release(version, warns, monkeypatch):
    module = nn.Linear(2, 2)
    compile_calls(module, monkeypatch)
    monkeypatch.setattr(torch, "__version__", version)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compile_for_device(module, torch.device("cuda"), frozen=True)
    assert any("174575" in str(w.message) for w in caught) == warns


def test_configs_carry_the_compile_switch():
    assert DistillConfig().compile is None and TeacherConfig().compile is None  # on CUDA only
    assert DistillConfig.from_dict({"compile": False}).compile is False
    assert TeacherConfig.from_dict({"compile": True}).to_dict()["compile"] is True


def test_the_engine_compiles_its_networks_as_the_config_says(tmp_path, monkeypatch):
    """The switch reaches every network a student run builds: the student compiled before DDP
    wrapping (not frozen), each live teacher captured (frozen); compile=False compiles nothing.
    compile_for_device itself is replaced by a recorder: what it does is tested above."""
    from mgd_ray.engine import distill, targets
    from mgd_ray.engine.context import LocalContext
    from mgd_ray.engine.teacher import CPSTask

    calls = []

    def record(module, device, enabled=None, frozen=False, backend="inductor"):
        calls.append((type(module).__name__, enabled, frozen))
        return module

    monkeypatch.setattr(distill, "compile_for_device", record)
    monkeypatch.setattr(targets, "compile_for_device", record)
    monkeypatch.setattr("mgd_ray.engine.teacher.compile_for_device", record)
    files = {}
    for role, arch in (("deep", "deeplabv3plus_resnet18"), ("wide", "deeplabv3plus_resnet18")):
        files[f"teacher_{role}_checkpoint"] = str(tmp_path / f"{role}.pt")
        torch.save(build_model(arch, 6).state_dict(), files[f"teacher_{role}_checkpoint"])
    data = type("Data", (), {"num_classes": 6})()
    ctx = LocalContext(str(tmp_path / "run"), verbose=False)
    for switch in (True, False):
        calls.clear()
        cfg = DistillConfig(
            teacher_deep="deeplabv3plus_resnet18",
            teacher_wide="deeplabv3plus_resnet18",
            compile=switch,
            **files,
        )
        distill.MGDTask(cfg, data, ctx)
        assert sorted(calls) == sorted(
            [("DeepLabV3Plus", switch, True)] * 2 + [("DeepLabV3Plus", switch, False)]
        )
        calls.clear()
        CPSTask(TeacherConfig(arch="deeplabv3plus_resnet18", compile=switch), data, ctx)
        assert calls == [("DeepLabV3Plus", switch, False)] * 2
