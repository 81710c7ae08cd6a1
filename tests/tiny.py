"""The tiny network the engine's tests share: the DeepLabv3+ contract in miniature, where a test
is about the step, the loop or the store rather than the networks."""

import torch.nn.functional as F
from torch import nn


class TinySeg(nn.Module):
    """logits B x C x H x W and features B x `width` x H/4 x W/4, like DeepLabv3+; `blocks`
    conv + BN + ReLU blocks (two: BN groups of a train-mode forward matter more than once)."""

    def __init__(self, num_classes: int = 3, width: int = 8, blocks: int = 1) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, width, 3, stride=4, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        for _ in range(blocks - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        self.backbone = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, x):
        features = self.backbone(x)
        logits = F.interpolate(
            self.head(features), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        return {"logits": logits, "features": features}
