"""Building a registered model the same way every time: seeded weights, BatchNorm statistics
recomputed on real photos, eval mode.

The zoo has no trained weights (nothing downloads at run time), so a model is defined by its name
and its seed. Calibration is what makes such a model useful for split inference: with default
BatchNorm statistics activations shrink about tenfold per stage, and the bytes, codec errors and
timings measured at a cut would describe a network that no one deploys.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from splitter.models._registry import model_constructor, model_info
from splitter.models.calibration import calibrate_batchnorm
from splitter.models.photos import calibration_photos


def create_model(name: str, *, calibrate: bool = True, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build model `name` (kwargs go to its constructor, e.g. `num_classes`) in eval mode.

    The same name, seed and kwargs give the same state_dict on every call. The caller's global
    torch RNG is left as it was, so creating a model never perturbs the caller's own randomness.
    """
    constructor = model_constructor(name)
    # Calibration runs inside the fork too: dropout, active in train mode, draws from torch's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = constructor(**kwargs)
        if calibrate:
            photos = [photo.image for photo in calibration_photos()]
            calibrate_batchnorm(model, photos, size=model_info(name).input_size, seed=seed)
    return model.eval()
