"""Model sources: a registered torch model name or an .onnx file → one ONNX model with static input
shapes, the ModelSource every later step works on.

Torch models are exported once with the TorchScript-based exporter (opset 17): it takes ~0.5 s for
MobileNetV2 where the dynamo exporter takes ~10 s, and it keeps module paths in node names, which
become the cut names. Every wrapper is put in eval mode first: the exporter restores the training
flag of the module it was given, recursively.
"""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx

from protos.errors import SplitInferError
from protos.preprocess import ImagePreprocess, load_preprocess
from splitter.graph.freeze import freeze, has_static_shapes
from splitter.graph.graph import Graph, default_input_shapes, fix_input_shapes, graph_from_onnx, load_onnx, model_inputs
from splitter.packaged import PACKAGED_MODELS

OPSET = 17


@dataclass(frozen=True)
class ModelSource:
    model_id: str
    model: onnx.ModelProto
    preprocess: ImagePreprocess | None
    # The class names of a classifier's output, when the model declares them.
    labels: tuple[str, ...] | None = None
    # The task metric its split outputs are judged by (splitter.metrics), when the model declares one.
    metric: str | None = None

    @cached_property
    def graph(self) -> Graph:
        """The model as plain data, built once per source: every stage of a run reads this one."""
        return graph_from_onnx(self.model)

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in model_inputs(self.model)}

    def inputs_from_image(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The model's input feed for one photo; SplitInferError if the model takes no image."""
        if self.preprocess is None or len(self.input_shapes) != 1:
            raise SplitInferError(f"model {self.model_id!r} does not take one image input")
        (name,) = self.input_shapes
        return {name: self.preprocess(image)}

    def calibration_samples(self, count: int) -> list[dict[str, np.ndarray]]:
        """Inputs to calibrate quantisation with, never used to evaluate: the calibration photos
        for image models, seeded random tensors otherwise."""
        if self.preprocess is not None and len(self.input_shapes) == 1:
            from splitter.models import calibration_photos

            return [self.inputs_from_image(photo.image) for photo in calibration_photos()[:count]]
        rng = np.random.default_rng(1)
        return [
            {n: rng.standard_normal(s).astype(np.float32) for n, s in self.input_shapes.items()} for _ in range(count)
        ]

    def samples(self, count: int) -> list[tuple[str, dict[str, np.ndarray]]]:
        """Real inputs to profile and verify with: for image models, the photos shipped with
        scikit-image and then views of them (splitter.models.evaluation_images: the first four are
        the colour photos themselves); seeded standard-normal tensors (named so) for a model that
        takes no image."""
        if self.preprocess is not None and len(self.input_shapes) == 1:
            from splitter.models import evaluation_images

            return [(photo.name, self.inputs_from_image(photo.image)) for photo in evaluation_images(count)]
        rng = np.random.default_rng(0)
        return [
            (f"random-{i}", {n: rng.standard_normal(s).astype(np.float32) for n, s in self.input_shapes.items()})
            for i in range(count)
        ]


def torch_to_onnx(module, input_shape: tuple[int, ...]) -> onnx.ModelProto:
    import torch

    module.eval()
    buffer = io.BytesIO()
    # The TorchScript exporter is chosen on purpose (see the module docstring); its deprecation
    # notices would only alarm users of the CLI. Models that read their input's size (TensorFlow
    # "SAME" padding) do so on purpose: the exported shapes are static, which the tracer warns
    # about, and the pads it cannot fold are folded by `freeze` below.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            module,
            (torch.zeros(input_shape),),
            buffer,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=["output"],
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def _image_preprocess(shape: tuple[int, ...]) -> ImagePreprocess | None:
    """An ONNX file carries no preprocessing; an NCHW RGB square input is assumed to be an
    ImageNet-normalised photo (resize, centre crop), anything else has none."""
    if len(shape) == 4 and shape[0] == 1 and shape[1] == 3 and shape[2] == shape[3]:
        return ImagePreprocess(size=shape[2], resize=round(shape[2] * 256 / 224))
    return None


def load_source(
    spec: str, *, input_shape: tuple[int, ...] | None = None, seed: int = 0, preprocess: str | None = None
) -> ModelSource:
    """`mobilenet_v2` (a registered model), `ppocr_det` (a model shipped in an installed package)
    or `path/to/model.onnx`; `preprocess` (a preset or a JSON file, protos.preprocess) replaces the
    model's own or assumed preprocessing."""
    source = _load_source(spec, input_shape=input_shape, seed=seed)
    if preprocess is None:
        return source
    if preprocess == "none":
        return dataclasses.replace(source, preprocess=None)
    shapes = list(source.input_shapes.values())
    if not (len(shapes) == 1 and len(shapes[0]) == 4 and shapes[0][:2] == (1, 3) and shapes[0][2] == shapes[0][3]):
        raise SplitInferError(
            f"--preprocess {preprocess!r}: model {source.model_id!r} does not take one square RGB image (its inputs: {source.input_shapes})"
        )
    chosen = load_preprocess(preprocess, shapes[0][-1])
    if chosen.size != shapes[0][-1]:
        raise SplitInferError(
            f"--preprocess {preprocess!r} makes {chosen.size}×{chosen.size} inputs; model {source.model_id!r} takes {shapes[0]}"
        )
    return dataclasses.replace(source, preprocess=chosen)


def _load_source(spec: str, *, input_shape: tuple[int, ...] | None = None, seed: int = 0) -> ModelSource:
    model_id, metric, packaged = Path(spec).stem, None, PACKAGED_MODELS.get(spec)
    if packaged is not None:
        model_id, spec, metric = packaged.name, str(packaged.locate()), packaged.metric
        input_shape = tuple(input_shape or packaged.input_shape)
    if spec.endswith(".onnx") or Path(spec).is_file():
        model = load_onnx(spec)
        if packaged is not None and packaged.build is not None:
            model = packaged.build(model, input_shape)
        inputs = model_inputs(model)
        if input_shape is not None:
            if len(inputs) != 1:
                raise SplitInferError(f"{spec!r} has {len(inputs)} inputs; --input-shape sets only one")
            shapes = {inputs[0].name: tuple(input_shape)}
        else:
            shapes = default_input_shapes(model)
        fixed = freeze(model, shapes)
        (shape, *others) = shapes.values()
        if packaged is not None and packaged.preprocess is not None:
            preprocess = load_preprocess(packaged.preprocess, shape[-1])
        else:
            preprocess = _image_preprocess(shape) if not others else None
        return ModelSource(model_id, fixed, preprocess, metric=metric)

    from splitter.catalogue import unknown_model
    from splitter.models import create_model, label_names, list_models, model_info

    if spec not in list_models():
        raise SplitInferError(unknown_model(spec))
    info = model_info(spec)
    shape = tuple(input_shape) if input_shape is not None else info.input_shape
    if len(shape) != 4 or shape[:2] != info.input_shape[:2] or shape[2] != shape[3]:
        raise SplitInferError(
            f"input shape {','.join(map(str, shape))} does not fit {spec!r}: it takes square images, "
            f"1,3,S,S (default {','.join(map(str, info.input_shape))})"
        )
    preprocess = (
        info.preprocess
        if shape == info.input_shape
        else ImagePreprocess(
            size=shape[-1], resize=round(shape[-1] * 256 / 224), mean=info.preprocess.mean, std=info.preprocess.std
        )
    )
    model = torch_to_onnx(create_model(spec, seed=seed), shape)
    shapes = default_input_shapes(model)
    model = fix_input_shapes(model, shapes)
    # The TorchScript exporter writes a Pad's pads as a small computation (it reverses them with
    # a Slice of step -1, which it cannot fold); such a model is frozen like an ONNX file.
    if not has_static_shapes(model):
        model = freeze(model, shapes)
    # Every registered model is an ImageNet-style classifier: its answer is the top-1 class.
    return ModelSource(spec, model, preprocess, label_names(info.labels) if info.labels else None, metric="top1")
