"""DeepLabv3+ head and network over any backbone exposing the feature contract.

A backbone is an nn.Module with `feature_info` (one dict per returned stage: "channels",
"reduction") whose forward(x) returns that list of stage features. The head reads only two of them
through the contract: the stride-4 low-level feature and the last (highest-level) one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ASPP_RATES_OS16 = (6, 12, 18)


def aspp_rates(output_stride: int) -> tuple[int, ...]:
    """Atrous rates 6/12/18 are defined at output stride 16; they scale with the feature resolution
    (x2 at OS 8, as in DeepLabv3; /2 at OS 32 -> 3/6/9) so the field of view in pixels is the same."""
    return tuple(r * 16 // output_stride for r in ASPP_RATES_OS16)


def _conv_bn_relu(in_ch: int, out_ch: int, kernel_size: int, dilation: int = 1) -> nn.Sequential:
    padding = (kernel_size - 1) // 2 * dilation
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class ASPPPooling(nn.Module):
    """Image-level branch: global average pool, 1x1 conv, broadcast back to h x w.

    It has no BatchNorm (a biased conv instead): after pooling each channel holds one value per
    image, so train-mode BN with batch 1 would fail ("expected more than 1 value per channel") and
    with small batches its statistics are noise."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv(F.adaptive_avg_pool2d(x, 1)))
        return y.expand(-1, -1, x.shape[-2], x.shape[-1])


class ASPP(nn.Module):
    """B x C_in x h x w -> B x 256 x h x w: 1x1, three 3x3 atrous branches, image pooling, 1x1 fuse."""

    def __init__(self, in_ch: int, rates: tuple[int, ...], out_ch: int = 256, dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_bn_relu(in_ch, out_ch, 1)] + [_conv_bn_relu(in_ch, out_ch, 3, r) for r in rates]
            + [ASPPPooling(in_ch, out_ch)])
        self.project = nn.Sequential(
            nn.Conv2d(out_ch * len(self.branches), out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([branch(x) for branch in self.branches], dim=1))


class DeepLabV3PlusHead(nn.Module):
    """Stage features -> (decoder features B x 256 x h4 x w4, logits B x C x h4 x w4)."""

    def __init__(self, feature_info: list[dict], num_classes: int, output_stride: int) -> None:
        super().__init__()
        low = [i for i, f in enumerate(feature_info) if f["reduction"] == 4]
        if not low:
            raise ValueError(f"backbone feature_info {feature_info}: DeepLabv3+ needs a stage at reduction 4")
        self.low_index, self.high_index = low[0], len(feature_info) - 1
        self.aspp = ASPP(feature_info[self.high_index]["channels"], aspp_rates(output_stride))
        self.low_level = _conv_bn_relu(feature_info[self.low_index]["channels"], 48, 1)
        self.decoder = nn.Sequential(_conv_bn_relu(256 + 48, 256, 3), _conv_bn_relu(256, 256, 3))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The head always starts from scratch, initialised as torchvision's segmentation models and
        the DeepLab references: He (fan_out) for the convolutions feeding a ReLU, BN scale 1 and shift 0,
        and the 1x1 classifier N(0, 0.01^2) with bias 0, so the initial logits are ~0 and the initial
        cross-entropy is ~log(num_classes). (He init on a 256 -> C classifier gives logits of std ~5 and
        an initial CE of 5-7, which makes the first SGD steps erratic.)"""
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
        low = self.low_level(feats[self.low_index])
        high = self.aspp(feats[self.high_index])
        high = F.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=False)
        features = self.decoder(torch.cat([high, low], dim=1))
        return features, self.classifier(features)


class DeepLabV3Plus(nn.Module):
    """model(x: B x 3 x H x W) -> {"logits": B x C x H x W, "features": B x 256 x ceil(H/4) x ceil(W/4)}.

    "features" is the decoder output before the classifier (MGD's region-level loss reads it)."""

    def __init__(self, backbone: nn.Module, num_classes: int, output_stride: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = DeepLabV3PlusHead(backbone.feature_info, num_classes, output_stride)
        self.num_classes = num_classes
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features, logits = self.head(self.backbone(x))
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"logits": logits, "features": features}
