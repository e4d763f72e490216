"""Recomputing a model's BatchNorm running statistics from real photos.

A randomly initialised network keeps BatchNorm's default statistics (mean 0, variance 1), which
match none of its actual activations: each stage then shrinks its input about tenfold and the
logits end near 1e-9. Replacing the statistics with the ones the network really produces on
photos gives activations of realistic scale and sparsity, which is what cut sizes, codec errors
and timings must be measured on. The crops are drawn with a seeded generator, so calibration is
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from protos.preprocess import ImagePreprocess

_BATCH = 16  # crops per forward pass: stable batch statistics at modest memory
_MIN_AREA = 0.25  # smallest crop, as a fraction of the largest square that fits the photo


def calibrate_batchnorm(
    model: nn.Module, photos: Sequence[np.ndarray], *, crops: int = 64, size: int = 224, seed: int = 0
) -> nn.Module:
    """Set every BatchNorm's running mean and variance to their average over `crops` random crops
    of `photos` (HxWx3 uint8, used in turn), normalised like `ImagePreprocess`.

    Returns `model`, in eval mode.
    """
    if len(photos) == 0:
        raise ValueError("calibrate_batchnorm needs at least one photo, got none")
    if crops < 1:
        raise ValueError(f"crops must be >= 1, got {crops}")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layers to calibrate")

    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        # momentum None makes the running statistics a plain average over the forward passes,
        # not an exponential one weighted towards the last batch.
        norm.momentum = None
    preprocess = ImagePreprocess(size=size, resize=size)
    rng = np.random.default_rng(seed)
    model.train()
    try:
        with torch.no_grad():
            for start in range(0, crops, _BATCH):
                batch = [
                    _random_crop(photos[i % len(photos)], preprocess, rng)
                    for i in range(start, min(start + _BATCH, crops))
                ]
                model(torch.from_numpy(np.stack(batch)))
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return model


def _random_crop(image: np.ndarray, preprocess: ImagePreprocess, rng: np.random.Generator) -> np.ndarray:
    """A random square of `image`, flipped half the time, as a 3xSIZExSIZE float32 array."""
    h, w = image.shape[:2]
    side = max(1, round(min(h, w) * np.sqrt(rng.uniform(_MIN_AREA, 1.0))))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    # The crop is square and preprocess.resize == preprocess.size, so preprocessing only scales
    # it to the input size and normalises it.
    crop = preprocess(image[top : top + side, left : left + side])[0]
    return crop[:, :, ::-1] if rng.random() < 0.5 else crop
