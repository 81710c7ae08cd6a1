"""DeepLabv3+ networks: shapes, feature contract, torchvision parity, weights loading, complexity."""
from __future__ import annotations

import math
import runpy
import sys

import pytest
import torch
from torch import nn

from mgd_ray.models import ARCHS, build_model, complexity, convert_sync_batchnorm

# torchvision's published parameter counts (whole ImageNet network) and classifier sizes:
# the independent expectation for our backbones, which leave the classifier out.
TORCHVISION_PARAMS = {
    "deeplabv3plus_resnet18": (11_689_512, 513_000),
    "deeplabv3plus_resnet50": (25_557_032, 2_049_000),
    "deeplabv3plus_resnet101": (44_549_160, 2_049_000),
    "deeplabv3plus_wide_resnet50_2": (68_883_240, 2_049_000),
    "deeplabv3plus_mobilenetv2": (3_504_872, 1_281_000),
}
# torchvision's published GMACs ("_ops", 224 x 224, whole network) and the classifier's MACs.
TORCHVISION_GMACS = {
    "deeplabv3plus_resnet18": (1.814, 512 * 1000),
    "deeplabv3plus_resnet50": (4.089, 2048 * 1000),
    "deeplabv3plus_resnet101": (7.801, 2048 * 1000),
    "deeplabv3plus_wide_resnet50_2": (11.398, 2048 * 1000),
    "deeplabv3plus_mobilenetv2": (0.301, 1280 * 1000),
}
STUDENTS = ("deeplabv3plus_resnet18", "deeplabv3plus_mobilenetv2")
HEAVY = ("deeplabv3plus_resnet50", "deeplabv3plus_resnet101", "deeplabv3plus_wide_resnet50_2")
# (low-level channels at stride 4, last-stage channels) read by the head
STAGE_CHANNELS = {"resnet18": (64, 512), "resnet50": (256, 2048), "resnet101": (256, 2048),
                  "wide_resnet50_2": (256, 2048), "mobilenetv2": (24, 1280)}


def _meta_model(arch, num_classes=5, output_stride=None):
    """Built on the meta device: real shapes, no memory, no compute (for the heavy nets)."""
    with torch.device("meta"):
        return build_model(arch, num_classes, output_stride=output_stride).eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_params_equal_torchvision_without_classifier(arch):
    total, classifier = TORCHVISION_PARAMS[arch]
    backbone = _meta_model(arch).backbone
    assert sum(p.numel() for p in backbone.parameters()) == total - classifier


@pytest.mark.parametrize("arch", STUDENTS)
def test_student_output_shapes_odd_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=7).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 321, 481))
    assert out["logits"].shape == (1, 7, 321, 481)
    assert out["features"].shape == (1, 256, math.ceil(321 / 4), math.ceil(481 / 4))
    assert torch.isfinite(out["logits"]).all()


@pytest.mark.parametrize("arch", HEAVY)
def test_teacher_output_shapes_odd_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 97))
    assert out["logits"].shape == (2, 3, 65, 97)
    assert out["features"].shape == (2, 256, 17, 25)


@pytest.mark.parametrize("arch", ARCHS)
def test_feature_contract_matches_real_outputs(arch):
    torch.manual_seed(0)
    backbone = build_model(arch, num_classes=2).backbone.eval()
    h, w = 65, 97
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, h, w))
    info = backbone.feature_info
    assert len(feats) == len(info)
    for f, i in zip(feats, info):
        # stride-2 convs/pools with padding give ceil(size / reduction)
        assert f.shape == (1, i["channels"], math.ceil(h / i["reduction"]), math.ceil(w / i["reduction"])), i
    low, high = STAGE_CHANNELS[arch.removeprefix("deeplabv3plus_")]
    assert (info[0]["channels"], info[0]["reduction"]) == (low, 4)
    assert info[-1]["channels"] == high


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_output_stride_sets_last_reduction_and_aspp_rates(arch, output_stride):
    model = _meta_model(arch, output_stride=output_stride)
    feats = model.backbone(torch.empty(1, 3, 128, 160, device="meta"))
    assert model.backbone.feature_info[-1]["reduction"] == output_stride
    assert feats[-1].shape[-2:] == (128 // output_stride, 160 // output_stride)
    assert feats[0].shape[-2:] == (32, 40)  # the decoder's stride-4 input never moves
    rates = [branch[0].dilation[0] for branch in model.head.aspp.branches[1:4]]
    assert rates == [r * 16 // output_stride for r in (6, 12, 18)]


def test_default_output_strides():
    expected = {"deeplabv3plus_resnet18": 16, "deeplabv3plus_mobilenetv2": 32, "deeplabv3plus_resnet50": 16,
                "deeplabv3plus_resnet101": 16, "deeplabv3plus_wide_resnet50_2": 16}
    for arch, os_ in expected.items():
        model = _meta_model(arch)
        assert model.output_stride == os_ and model.backbone.feature_info[-1]["reduction"] == os_


def test_torchvision_key_names():
    resnet = _meta_model("deeplabv3plus_resnet50").backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.bias",
                "layer3.5.conv3.weight", "layer4.2.bn3.running_mean"):
        assert key in resnet
    mbv2 = _meta_model("deeplabv3plus_mobilenetv2").backbone.state_dict()
    for key in ("features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
                "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
                "features.2.conv.1.1.weight", "features.2.conv.2.weight", "features.2.conv.3.running_var",
                "features.17.conv.3.weight", "features.18.0.weight", "features.18.1.bias"):
        assert key in mbv2
    assert not any(k.startswith(("fc.", "classifier.")) for k in (*resnet, *mbv2))


def _randomised(model: nn.Module) -> dict[str, torch.Tensor]:
    """A backbone state dict with every float tensor random, so a silent skip would show."""
    gen = torch.Generator().manual_seed(1)
    return {k: (torch.rand(v.shape, generator=gen) + 0.5 if v.is_floating_point() else v.clone())
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch, classifier", [
    ("deeplabv3plus_resnet18", {"fc.weight": torch.zeros(1000, 512), "fc.bias": torch.zeros(1000)}),
    ("deeplabv3plus_mobilenetv2", {"classifier.1.weight": torch.zeros(1000, 1280),
                                   "classifier.1.bias": torch.zeros(1000)}),
])
def test_torchvision_checkpoint_round_trips_strictly(tmp_path, arch, classifier):
    state = _randomised(build_model(arch, 4).backbone)
    path = tmp_path / "imagenet.pth"
    # older torchvision files carry no BN counters: drop them too
    torch.save({**{k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, **classifier}, path)
    model = build_model(arch, 4, backbone_weights=str(path))
    loaded = model.backbone.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(loaded[key], value), key
    # and back: what we hold loads strictly into a fresh backbone of the same architecture
    build_model(arch, 4).backbone.load_state_dict(loaded, strict=True)


@pytest.fixture()
def resnet18_state():
    return _randomised(build_model("deeplabv3plus_resnet18", 2).backbone)


def test_checkpoint_missing_key_is_named(tmp_path, resnet18_state):
    del resnet18_state["layer2.1.conv2.weight"]
    path = tmp_path / "missing.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(ValueError, match=r"missing keys \[layer2\.1\.conv2\.weight\]") as err:
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(path))
    assert str(path) in str(err.value)


def test_checkpoint_wrong_key_and_shape_are_named(tmp_path, resnet18_state):
    resnet18_state["layer5.0.conv1.weight"] = torch.zeros(1)
    resnet18_state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    path = tmp_path / "wrong.pth"
    torch.save(resnet18_state, path)
    with pytest.raises(ValueError) as err:
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(path))
    message = str(err.value)
    assert "unexpected keys [layer5.0.conv1.weight]" in message
    assert "conv1.weight (file (64, 3, 3, 3), model (64, 3, 7, 7))" in message


def test_checkpoint_for_another_backbone_fails(tmp_path):
    path = tmp_path / "mbv2.pth"
    torch.save(_randomised(build_model("deeplabv3plus_mobilenetv2", 2).backbone), path)
    with pytest.raises(ValueError, match="does not match the ResNet backbone"):
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(path))


def test_unreadable_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(tmp_path / "nope.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth.*cannot be read"):
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(junk))
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        build_model("deeplabv3plus_resnet18", 2, backbone_weights=str(tmp_path / "list.pth"))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="arch 'deeplabv3plus_vgg16': expected one of"):
        build_model("deeplabv3plus_vgg16", 21)
    with pytest.raises(ValueError, match="output_stride=4"):
        build_model("deeplabv3plus_resnet18", 21, output_stride=4)
    with pytest.raises(ValueError, match="num_classes=0"):
        build_model("deeplabv3plus_resnet18", 0)


@pytest.mark.parametrize("arch", ["deeplabv3plus_resnet18", "deeplabv3plus_mobilenetv2"])
def test_fresh_head_starts_near_uniform(arch):
    # classifier N(0, 0.01^2), bias 0: logits ~0 and the initial cross-entropy ~log(C), not the 5-7 of
    # a He-initialised classifier, so early SGD steps are not dominated by random logits
    torch.manual_seed(0)
    model = build_model(arch, 6).train()
    logits = model(torch.randn(2, 3, 48, 48))["logits"]
    ce = nn.functional.cross_entropy(logits, torch.randint(0, 6, (2, 48, 48)))
    assert abs(ce.item() - math.log(6)) < 0.05 and logits.abs().max() < 2.0
    assert model.head.classifier.bias.abs().max() == 0


@pytest.mark.parametrize("arch", ["deeplabv3plus_resnet18", "deeplabv3plus_resnet101"])
def test_fresh_residual_blocks_start_as_identity(arch):
    # zero-initialised last BN of each residual branch: a block computes relu(shortcut(x)) at start
    backbone = build_model(arch, 6).backbone.eval()
    x = torch.randn(1, 64 if arch.endswith("18") else 256, 12, 12)
    blocks = [backbone.layer1[-1], backbone.layer2[0]]
    with torch.no_grad():
        assert torch.equal(blocks[0](x), torch.relu(x))
        y = blocks[0](x)
        assert torch.equal(blocks[1](y), torch.relu(blocks[1].downsample(y)))


def test_train_mode_batch_of_one_and_backward():
    # the image-pooling branch sees one value per channel: BN there would refuse batch 1 in train mode
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_mobilenetv2", 3).train()
    out = model(torch.randn(1, 3, 64, 64))
    out["logits"].mean().backward()
    assert model.backbone.features[0][0].weight.grad is not None


def test_sync_batchnorm_and_channels_last():
    torch.manual_seed(0)
    model = build_model("deeplabv3plus_resnet18", 4).eval()
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    x = torch.randn(2, 3, 65, 97)
    with torch.no_grad():
        reference = model(x)["logits"]
    synced = convert_sync_batchnorm(model)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == n_bn
    assert not any(type(m) is nn.BatchNorm2d for m in synced.modules())
    assert hasattr(synced, "backbone") and hasattr(synced, "head")
    synced = synced.to(memory_format=torch.channels_last)
    with torch.no_grad():
        out = synced(x.contiguous(memory_format=torch.channels_last))
    # same maths in another memory order: equal up to float32 summation order (tolerance scaled to the logits)
    torch.testing.assert_close(out["logits"], reference, rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    synced.train()(x)  # no process group: SyncBatchNorm falls back to per-process statistics


@pytest.mark.parametrize("arch", ARCHS)
def test_backbone_macs_match_torchvision(arch):
    gmacs, classifier_macs = TORCHVISION_GMACS[arch]
    ours = complexity(arch, size=224, output_stride=32)["backbone_gmacs"]
    assert ours == pytest.approx(gmacs - classifier_macs / 1e9, rel=2e-3)


@pytest.mark.parametrize("arch, output_stride", [("deeplabv3plus_resnet18", 16), ("deeplabv3plus_mobilenetv2", 32),
                                                 ("deeplabv3plus_wide_resnet50_2", 8)])
def test_head_macs_and_params_by_hand(arch, output_stride):
    size, classes = 96, 21
    low, high = STAGE_CHANNELS[arch.removeprefix("deeplabv3plus_")]
    h, h4 = math.ceil(size / output_stride) ** 2, math.ceil(size / 4) ** 2
    aspp_macs = (high * 256 + 3 * 9 * high * 256 + 5 * 256 * 256) * h + high * 256  # pooling conv at 1 x 1
    decoder_macs = (low * 48 + 9 * 304 * 256 + 9 * 256 * 256 + 256 * classes) * h4
    aspp_params = high * 256 + 3 * 9 * high * 256 + 4 * 512 + high * 256 + 256 + 5 * 256 * 256 + 512
    decoder_params = low * 48 + 96 + 9 * 304 * 256 + 512 + 9 * 256 * 256 + 512 + 256 * classes + classes
    c = complexity(arch, classes, size, output_stride)
    assert round((c["total_gmacs"] - c["backbone_gmacs"]) * 1e9) == aspp_macs + decoder_macs
    assert c["total_params"] - c["backbone_params"] == aspp_params + decoder_params


def test_complexity_table_reports_computed_ratios(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["complexity", "--size", "256"])
    runpy.run_module("mgd_ray.models.complexity", run_name="__main__")
    text = capsys.readouterr().out
    r18 = complexity("deeplabv3plus_resnet18", size=256)["backbone_gmacs"]
    for teacher in ("deeplabv3plus_resnet101", "deeplabv3plus_wide_resnet50_2"):
        ratio = complexity(teacher, size=256)["backbone_gmacs"] / r18
        assert f"| resnet18 | {teacher.removeprefix('deeplabv3plus_')} " in text
        assert f"| {ratio:.1f}x |" in text
    assert "3.4-5.3x" in text and "38.7-59.6x" in text
    assert text.count("\n- ") == 2  # one sentence per student on the comparison with the paper
