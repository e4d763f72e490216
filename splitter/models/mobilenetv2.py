"""MobileNetV2 (Sandler et al., 2018), written here with torchvision's state_dict layout.

torchvision cannot be imported in this environment, and the edge side never imports torch at all,
so the definition lives in the project. Keeping torchvision's parameter names (`features.N...`,
`classifier.1`) means its trained weights load unchanged with `load_state_dict` when someone has
them. `features` is a chain of 19 blocks whose outputs are the natural cut points.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitter.models._registry import register_model

# (expansion t, output channels c, repeats n, first stride s), as in the paper's Table 2.
_INVERTED_RESIDUAL_SETTING = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1):
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            # Not in place: a cut may hand the BatchNorm output to a hook or to the wire.
            nn.ReLU6(),
        )


class InvertedResidual(nn.Module):
    """Expand (1x1), filter (3x3 depthwise), project (1x1, linear); a skip when the shape allows."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = round(in_channels * expand_ratio)
        self.use_res_connect = stride == 1 and in_channels == out_channels
        expand = [ConvBNReLU6(in_channels, hidden, kernel_size=1)] if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand,
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        in_channels = make_divisible(32 * width_mult)
        # The last layer does not narrow below 1280 channels, as in the paper.
        self.num_features = make_divisible(1280 * max(1.0, width_mult))
        blocks: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=2)]
        for t, c, n, s in _INVERTED_RESIDUAL_SETTING:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                blocks.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        blocks.append(ConvBNReLU6(in_channels, self.num_features, kernel_size=1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.num_features, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's initialisation, so a seeded model starts where an untrained torchvision one does.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("mobilenet_v2")
def mobilenet_v2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2, width 1.0 (3.5 M parameters, torchvision layout), untrained: seeded, BatchNorm calibrated."""
    return MobileNetV2(**kwargs)


@register_model("mobilenet_v2_035")
def mobilenet_v2_035(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2, width 0.35, untrained: small and fast, for tests."""
    return MobileNetV2(width_mult=0.35, **kwargs)
