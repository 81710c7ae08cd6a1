"""MobileNetV2 backbone in torchvision's exact module layout and parameter naming.

`features.N` holds torchvision's 19 modules: features.0 and features.18 are Conv-BN-ReLU6 triples
(`features.0.0`, `features.0.1`), features.1..17 are InvertedResidual blocks whose layers live in a
`conv` Sequential (`features.N.conv.0.0` ... `features.N.conv.3`), so a torchvision ImageNet
checkpoint loads key for key (its `classifier.*` is not part of the backbone). The last 1x1 conv to
1280 channels is kept: it is part of the ImageNet network whose weights are loaded and of the FLOPs
the paper compares. Output stride 8/16 replaces the stride of the later stride-2 blocks with dilation
of their depthwise convs, as DeepLab does.
"""
from __future__ import annotations

import torch
from torch import nn

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's width_mult = 1.0 table
_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# indices into `features` of the stages forward() returns: the last module of each resolution
_STAGES = (3, 6, 13, 18)


class ConvBNReLU6(nn.Sequential):
    """torchvision's Conv2dNormActivation(norm=BatchNorm2d, activation=ReLU6): keys .0 / .1."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int = 1) -> None:
        super().__init__()
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(inp, hidden_dim, kernel_size=1))
        layers += [
            ConvBNReLU6(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, dilation=dilation),
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 trunk without its classifier. forward(x: B x 3 x H x W) -> features at
    reductions 4, 8, 16, 32 (fewer distinct ones when dilated), as declared in `feature_info`."""

    def __init__(self, output_stride: int = 32) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={output_stride!r}: expected one of 8, 16, 32")
        input_channel, last_channel = 32, 1280
        features: list[nn.Module] = [ConvBNReLU6(3, input_channel, stride=2)]
        current_stride, dilation = 2, 1
        reductions = [2]
        for t, c, n, s in _SETTING:
            previous_dilation = dilation
            if s > 1 and current_stride >= output_stride:
                # the target stride is reached: keep the resolution, widen the receptive field instead
                stride, dilation = 1, dilation * s
            else:
                stride, current_stride = s, current_stride * s
            for i in range(n):
                # the first block sits where the stride was and keeps the previous dilation
                features.append(InvertedResidual(input_channel, c, stride if i == 0 else 1, t,
                                                 previous_dilation if i == 0 else dilation))
                reductions.append(current_stride)
                input_channel = c
        features.append(ConvBNReLU6(input_channel, last_channel, kernel_size=1))
        reductions.append(current_stride)
        self.features = nn.Sequential(*features)
        channels = [m.out_channels if isinstance(m, InvertedResidual) else m[0].out_channels for m in features]
        self.feature_info = [{"name": f"features.{i}", "channels": channels[i], "reduction": reductions[i]}
                             for i in _STAGES]
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
