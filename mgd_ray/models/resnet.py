"""ResNet backbones in torchvision's exact module layout and parameter naming.

torchvision itself cannot be imported beside this torch, so the networks are rebuilt here with the
same names (conv1, bn1, layer1..4 of BasicBlock / Bottleneck with downsample.0/1) so that a
torchvision ImageNet checkpoint loads key for key. The classifier (fc) is left out: a segmentation
backbone never uses it.

Output stride as the official MGD code sets it (`_nostride_dilate` over layer4's blocks): at 16,
layer4 loses its stride (the strided 3x3 conv and the 1x1 downsample conv) and the 3x3 convs of its
blocks are dilated 2 / 4 / 8, one rate per block (multi-grid; ResNet-18 has two blocks: 2 / 4);
layer3 keeps its stride. At 8 (not used by the paper) layer3 is dilated 2 as well and layer4's
rates double (4 / 8 / 16); at 32 the network is torchvision's, undilated. The official ResNet-18
and ResNet-101 use a deep 3-conv stem; torchvision's 7x7 stem is kept here so that the published
torchvision checkpoints load with every key matched (parameter totals differ by < 0.3%).
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def nostride_dilate(module: nn.Module, dilation: int) -> None:
    """The official `_nostride_dilate`: every stride-2 conv in `module` gets stride 1, every 3x3
    conv dilation (and padding) `dilation`; 1x1 convs (the downsample shortcut) only lose their
    stride."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            if m.stride == (2, 2):
                m.stride = (1, 1)
            if m.kernel_size == (3, 3):
                m.dilation = (dilation, dilation)
                m.padding = (dilation, dilation)


class ResidualBlock(nn.Module):
    """What torchvision's two blocks share: their constructor's arguments, and the shortcut
    (`downsample`, or the identity) added to the residual branch before a last ReLU. A block
    builds its branch's modules in `build` (in torchvision's order, which is also the order in
    which ResNet draws their initial weights) and applies them in `branch`."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.build(inplanes, planes, stride, base_width)
        self.downsample = downsample

    def build(self, inplanes: int, planes: int, stride: int, base_width: int) -> None:
        raise NotImplementedError

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.branch(x) + identity)


class BasicBlock(ResidualBlock):
    expansion = 1

    def build(self, inplanes: int, planes: int, stride: int, base_width: int) -> None:
        if base_width != 64:
            raise ValueError("BasicBlock only supports base_width=64 (as torchvision)")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))


class Bottleneck(ResidualBlock):
    """torchvision's V1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion = 4

    def build(self, inplanes: int, planes: int, stride: int, base_width: int) -> None:
        width = int(planes * (base_width / 64.0))
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


class ResNet(nn.Module):
    """ResNet trunk without avgpool/fc. forward(x: B x 3 x H x W) -> [layer1, layer2, layer3,
    layer4] features; `feature_info[i]` gives their channels (num_chs), reduction (input size /
    feature size) and module name."""

    unused_checkpoint_prefixes = ("fc.",)  # the ImageNet classifier in a torchvision file

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        output_stride: int = 32,
        width_per_group: int = 64,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={output_stride!r}: expected one of 8, 16, 32")
        self.inplanes = 64
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        reductions = [4, 8, 16, 32]
        if output_stride <= 16:
            base = 32 // output_stride  # layer4's multi-grid rates: 2/4/8 at OS16, 4/8/16 at OS8
            for i, blk in enumerate(self.layer4):
                nostride_dilate(blk, base * 2**i)
            reductions[3] = 16
        if output_stride == 8:
            nostride_dilate(self.layer3, 2)
            reductions[2:] = [8, 8]
        self.feature_info = [
            {"module": f"layer{i + 1}", "num_chs": c * block.expansion, "reduction": r}
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

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.base_width)]
        self.inplanes = planes * block.expansion
        layers += [
            block(self.inplanes, planes, base_width=self.base_width) for _ in range(1, blocks)
        ]
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
    """The official code's `wide_resnet34_2`: Bottleneck [3, 4, 6, 3] of width 128, i.e.
    WRN-50-2."""
    return ResNet(Bottleneck, [3, 4, 6, 3], output_stride, width_per_group=128)
