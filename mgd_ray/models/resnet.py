"""ResNet backbones in torchvision's exact module layout and parameter naming.

torchvision itself cannot be imported beside this torch, so the networks are rebuilt here with the
same names (conv1, bn1, layer1..4 of BasicBlock / Bottleneck with downsample.0/1) so that a
torchvision ImageNet checkpoint loads key for key. The classifier (fc) is left out: a segmentation
backbone never uses it. Output stride 8/16/32 follows torchvision's `replace_stride_with_dilation`:
the stride of a late stage becomes dilation. Unlike torchvision, BasicBlock accepts dilation > 1,
which a ResNet-18 at output stride 16 needs (DeepLab practice; the weights do not change shape).
"""
from __future__ import annotations

import torch
from torch import nn

# output stride -> replace_stride_with_dilation for layer2, layer3, layer4
_DILATE = {8: (False, True, True), 16: (False, False, True), 32: (False, False, False)}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, next_dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64 (as torchvision)")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        # the second conv already runs at the stage's (possibly increased) dilation
        self.conv2 = conv3x3(planes, planes, dilation=next_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's V1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1, next_dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk without avgpool/fc. forward(x: B x 3 x H x W) -> [layer1, layer2, layer3, layer4]
    features; `feature_info[i]` gives their channels and reduction (input size / feature size)."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: list[int],
                 output_stride: int = 32, width_per_group: int = 64) -> None:
        super().__init__()
        if output_stride not in _DILATE:
            raise ValueError(f"output_stride={output_stride!r}: expected one of 8, 16, 32")
        self.inplanes = 64
        self.dilation = 1
        self.groups = 1
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        dilate = _DILATE[output_stride]
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilate=dilate[0])
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2, dilate=dilate[1])
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2, dilate=dilate[2])
        reductions = [4, 8, 16, 32]
        for i, d in enumerate(dilate):
            if d:  # a dilated stage keeps the previous stage's resolution
                reductions[i + 1] = reductions[i]
        self.feature_info = [
            {"name": f"layer{i + 1}", "channels": c * block.expansion, "reduction": r}
            for i, (c, r) in enumerate(zip((64, 128, 256, 512), reductions))
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # The last BN of every residual branch starts at zero (torchvision's zero_init_residual,
        # Goyal et al. 2017): each block begins as the identity, which lets a deep network trained
        # from scratch learn from its first steps. Loaded ImageNet weights overwrite it.
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.bn2.weight if isinstance(m, BasicBlock) else m.bn3.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        # As torchvision: the first block's 3x3 conv that would have been strided keeps the previous
        # dilation; BasicBlock's second conv comes after it and runs at the new one (Bottleneck has
        # no second 3x3 conv and ignores next_dilation).
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                        previous_dilation, next_dilation=self.dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, next_dilation=self.dilation))
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats


def resnet18(output_stride: int = 32) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], output_stride)


def resnet50(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], output_stride)


def resnet101(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 23, 3], output_stride)


def wide_resnet50_2(output_stride: int = 32) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], output_stride, width_per_group=128)
