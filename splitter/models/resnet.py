"""ResNet with basic blocks (He et al., 2016), written here with torchvision's state_dict layout.

Unlike MobileNetV2's chain, every block has a skip connection and the first block of a stage
has a projection (`downsample`) beside it, so a cut inside a block crosses two tensors: the
model that exercises DAG cuts. torchvision's parameter names (`conv1`, `layer1.0.conv1`,
`layer2.0.downsample.0`, `fc`) let its trained weights load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from splitter.models._registry import register_model


def _conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # Not in place: a cut may hand a BatchNorm output to a hook or to the wire.
        self.relu = nn.ReLU()
        self.conv2 = _conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        # A 1x1 projection where the skip's shape would not match the block's output.
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, layers: Sequence[int], num_classes: int = 1000, base_channels: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, base_channels, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_channels)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = base_channels
        for index, blocks in enumerate(layers):
            out_channels = base_channels * 2**index
            stage = [BasicBlock(in_channels, out_channels, 1 if index == 0 else 2)]
            stage += [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
            setattr(self, f"layer{index + 1}", nn.Sequential(*stage))
            in_channels = out_channels
        self.stages = len(layers)
        self.num_features = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.num_features, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation (fc keeps PyTorch's default), so a seeded model starts where
        # an untrained torchvision one does.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(1, self.stages + 1):
            x = getattr(self, f"layer{index}")(x)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("resnet18")
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18 (11.7 M parameters, torchvision layout), untrained: seeded, BatchNorm calibrated."""
    return ResNet((2, 2, 2, 2), **kwargs)


@register_model("resnet_tiny")
def resnet_tiny(**kwargs: Any) -> ResNet:
    """ResNet with one basic block per stage and 16 base channels, untrained: small and fast, for tests."""
    return ResNet((1, 1, 1, 1), base_channels=16, **kwargs)
