"""DeepLabv3+ head and network as the official MGD code builds them, over any backbone exposing the
feature contract.

A backbone is an nn.Module with `feature_info` (timm's names: one dict per returned stage with
"num_chs", "reduction" and "module", the name of the submodule that produces it) whose forward(x)
returns that list of stage features. The head reads only two of them through the contract: the
stride-4 low-level feature and the last (highest-level) one. The contract is checked when a network
is built (`check_feature_info`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

ASPP_RATES = (6, 12, 18)


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """6/12/18 at output stride 16 and, as in the official code, also at 32 (the MobileNetV2
    student); doubled at 8 (DeepLabv3's convention; the paper does not use 8)."""
    return tuple(r * 2 for r in ASPP_RATES) if output_stride == 8 else ASPP_RATES


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size, padding=(kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    )


def _leaky_relu(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.01, inplace=True)  # the official nn.LeakyReLU() default slope


def _has_batch_statistics(bn: nn.Module, batch: int) -> bool:
    """Train-mode BN over a B x C x 1 x 1 input needs B > 1, unless a SyncBatchNorm gathers the
    other ranks' values (the official code's case: one or two images per GPU, SyncBN over all)."""
    if batch > 1:
        return True
    return (
        isinstance(bn, nn.SyncBatchNorm)
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_world_size(bn.process_group) > 1
    )


class ASPP(nn.Module):
    """The official MGD ASPP: B x C_in x h x w -> B x 256 x h x w.

    out  = red_conv(LeakyReLU(map_bn(cat[1x1, 3x3 @ r1, 3x3 @ r2, 3x3 @ r3](x))))
    pool = pool_red_conv(LeakyReLU(global_pooling_bn(global_pooling_conv(GAP(x)))))
    y    = LeakyReLU(red_bn(out + pool))          (pool broadcast over h x w; no dropout)

    The official pooling branch's BN cannot run in train mode on one image alone (one value per
    channel); it relies on SyncBatchNorm across GPUs. Here, with one image per process and no
    SyncBatchNorm peers, that one BN normalises with its running statistics (and leaves them
    unchanged), so batch 1 trains instead of failing."""

    def __init__(self, in_ch: int, rates: tuple[int, ...] = ASPP_RATES, out_ch: int = 256) -> None:
        super().__init__()
        self.map_convs = nn.ModuleList(
            [nn.Conv2d(in_ch, out_ch, 1, bias=False)]
            + [nn.Conv2d(in_ch, out_ch, 3, padding=r, dilation=r, bias=False) for r in rates]
        )
        self.map_bn = nn.BatchNorm2d(out_ch * len(self.map_convs))
        self.red_conv = nn.Conv2d(out_ch * len(self.map_convs), out_ch, 1, bias=False)
        self.global_pooling_conv = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.global_pooling_bn = nn.BatchNorm2d(out_ch)
        self.pool_red_conv = nn.Conv2d(out_ch, out_ch, 1, bias=False)
        self.red_bn = nn.BatchNorm2d(out_ch)

    def _pooling_norm(self, pool: torch.Tensor) -> torch.Tensor:
        bn = self.global_pooling_bn
        if bn.training and not _has_batch_statistics(bn, pool.shape[0]):
            return F.batch_norm(
                pool, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
            )
        return bn(pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.red_conv(
            _leaky_relu(self.map_bn(torch.cat([conv(x) for conv in self.map_convs], dim=1)))
        )
        pool = self.global_pooling_conv(x.mean(dim=(2, 3), keepdim=True))
        pool = self.pool_red_conv(_leaky_relu(self._pooling_norm(pool)))
        return _leaky_relu(self.red_bn(out + pool))


def check_feature_info(backbone: nn.Module) -> list[dict]:
    """The backbone's `feature_info`, checked: a non-empty list of {"num_chs": int > 0,
    "reduction": power of two, non-decreasing, "module": a submodule name}, with a stage at
    reduction 4."""
    info = getattr(backbone, "feature_info", None)
    name = type(backbone).__name__
    if not isinstance(info, list) or not info:
        raise ValueError(f"{name}.feature_info={info!r}: expected a non-empty list of stage dicts")
    modules = dict(backbone.named_modules())
    previous = 1
    for stage in info:
        if not isinstance(stage, dict) or set(stage) != {"num_chs", "reduction", "module"}:
            raise ValueError(
                f"{name}.feature_info stage {stage!r}: expected the keys num_chs, reduction, "
                "module"
            )
        chs, red = stage["num_chs"], stage["reduction"]
        if not isinstance(chs, int) or chs < 1:
            raise ValueError(
                f"{name}.feature_info stage {stage}: num_chs must be a positive integer"
            )
        if not isinstance(red, int) or red < previous or red & (red - 1):
            raise ValueError(
                f"{name}.feature_info stage {stage}: reductions must be non-decreasing powers of "
                "two"
            )
        if stage["module"] not in modules:
            raise ValueError(
                f"{name}.feature_info stage {stage}: no submodule named {stage['module']!r}"
            )
        previous = red
    if not any(stage["reduction"] == 4 for stage in info):
        raise ValueError(f"{name}.feature_info {info}: DeepLabv3+ needs a stage at reduction 4")
    return info


class DeepLabV3PlusHead(nn.Module):
    """Stage features -> (decoder features B x 256 x h4 x w4, logits B x C x h4 x w4).

    The official decoder: the stride-4 feature reduced by a 1x1 conv to 48 channels (24 for
    MobileNetV2's 24-channel feature: min(48, its channels)), concatenated with the ASPP output
    upsampled with align_corners=True, two 3x3 convs of 256 (BN, ReLU), a 1x1 classifier with
    bias."""

    def __init__(self, feature_info: list[dict], num_classes: int, output_stride: int) -> None:
        super().__init__()
        self.low_index = next(i for i, f in enumerate(feature_info) if f["reduction"] == 4)
        self.high_index = len(feature_info) - 1
        self.aspp = ASPP(feature_info[self.high_index]["num_chs"], aspp_rates(output_stride))
        low_chs = feature_info[self.low_index]["num_chs"]
        reduced = min(48, low_chs)
        self.reduce = _conv_bn_relu(low_chs, reduced, 1)
        self.last_conv = nn.Sequential(
            _conv_bn_relu(256 + reduced, 256, 3), _conv_bn_relu(256, 256, 3)
        )
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The head always starts from scratch, initialised as torchvision's segmentation models
        and the DeepLab references: He (fan_out) for the convolutions feeding a ReLU, BN scale 1
        and shift 0, and the 1x1 classifier N(0, 0.01^2) with bias 0, so the initial logits are ~0
        and the initial cross-entropy is ~log(num_classes). (He init on a 256 -> C classifier gives
        logits of std ~5 and an initial CE of 5-7, which makes the first SGD steps erratic.) The
        official code initialises every head conv, the classifier included, He (fan_in) with the
        classifier's default bias."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.classifier.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.reduce(feats[self.low_index])
        high = self.aspp(feats[self.high_index])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        features = self.last_conv(torch.cat([high, low], dim=1))
        return features, self.classifier(features)


class DeepLabV3Plus(nn.Module):
    """model(x: B x 3 x H x W) -> {"logits": B x C x H x W,
    "features": B x 256 x ceil(H/4) x ceil(W/4)}.

    "features" is the decoder output before the classifier (MGD's region-level loss reads it)."""

    def __init__(self, backbone: nn.Module, num_classes: int, output_stride: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabV3PlusHead(check_feature_info(backbone), num_classes, output_stride)
        self.num_classes = num_classes
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.head(self.backbone(x))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return {"logits": logits, "features": features}
