"""MobileNetV2 backbone as the official MGD student: torchvision's layout and naming, without the
final 1x1 conv to 1280 channels.

`features.N` holds torchvision's modules 0..17: features.0 is a Conv-BN-ReLU6 triple
(`features.0.0`, `features.0.1`), features.1..17 are InvertedResidual blocks whose layers live in a
`conv` Sequential (`features.N.conv.0.0` ... `features.N.conv.3`), so a torchvision ImageNet
checkpoint loads key for key. Two parts of that file are not used: `classifier.*` (the ImageNet
classifier) and `features.18.*` (the 320 -> 1280 1x1 conv, which the official student drops: its
ASPP reads the 320-channel features.17).

Output stride 32 as the official code sets it: features.14 keeps its stride (the network reaches
stride 32 there) and the depthwise 3x3 convs of features.15, .16, .17 are dilated 2 / 4 / 8 (the
official `_nostride_dilate` loop over features[15:18]). At 16 (and 8; not used by the paper)
features.14 (and features.7 .. 13) lose their stride and every later rate scales by 2 (4).
"""

from __future__ import annotations

import torch
from torch import nn

from .resnet import nostride_dilate

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's width_mult = 1.0
# table
_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]
# indices into `features` of the stages forward() returns: the last module of each resolution
_STAGES = (3, 6, 13, 17)


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation(norm=BatchNorm2d, activation=ReLU6): keys .0 / .1."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_ch,
                out_ch,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk (features.0 .. 17). forward(x: B x 3 x H x W) -> the features of
    features.3 (24 ch, reduction 4), .6 (32 ch, 8), .13 (96 ch, 16) and .17 (320 ch, output
    stride), as declared in `feature_info`."""

    # in a torchvision checkpoint: the ImageNet classifier and the 1280-channel conv, unused here
    unused_checkpoint_prefixes = ("classifier.", "features.18.")

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={output_stride!r}: expected one of 8, 16, 32")
        input_channel = 32
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        for t, c, n, s in _SETTING:
            for i in range(n):
                features.append(InvertedResidual(input_channel, c, s if i == 0 else 1, t))
                input_channel = c
        self.features = nn.Sequential(*features)
        scale = 32 // output_stride
        if output_stride == 8:
            for block in self.features[7:14]:  # the stride-16 stage
                nostride_dilate(block, 2)
        if output_stride <= 16:
            nostride_dilate(self.features[14], scale)
        for i, block in enumerate(self.features[15:18]):
            nostride_dilate(block, scale * 2 ** (i + 1))
        reductions = [min(r, output_stride) for r in (4, 8, 16, 32)]
        self.feature_info = [
            {"module": f"features.{i}", "num_chs": self.features[i].out_channels, "reduction": r}
            for i, r in zip(_STAGES, reductions)
        ]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in _STAGES:
                feats.append(x)
        return feats


def mobilenet_v2(output_stride: int = 32) -> MobileNetV2:
    return MobileNetV2(output_stride)
