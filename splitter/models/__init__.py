"""The model zoo: networks defined in the project, built by name with seeded weights and
BatchNorm statistics calibrated on real photos (`create_model("mobilenet_v2")`).

Importing this package imports every model module, which is what registers them.
"""

from __future__ import annotations

from splitter.models import mobilenetv2, resnet  # noqa: F401  (registers the models)
from splitter.models._factory import create_model
from splitter.models._registry import ModelInfo, list_models, model_info, register_model
from splitter.models.calibration import calibrate_batchnorm
from splitter.models.photos import Photo, calibration_photos, evaluation_photos

__all__ = [
    "ModelInfo",
    "Photo",
    "calibrate_batchnorm",
    "calibration_photos",
    "create_model",
    "evaluation_photos",
    "list_models",
    "model_info",
    "register_model",
]
