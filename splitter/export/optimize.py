"""Device-side optimisation of a head: int8 weights and activations, and ONNX Runtime's mobile
`.ort` format.

Quantisation is static (QDQ, per-channel int8 weights, uint8 activations) and calibrated on real
inputs the caller passes (photos never used for evaluation), so the activation ranges are the
ones the device will meet. The `.ort` format is what ORT Mobile loads on Android and iOS; the full
onnxruntime loads it too, so the edge runtime needs nothing extra.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from protos.errors import SplitInferError


class _Feeds:
    """onnxruntime.quantization's CalibrationDataReader over a list of input feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_head(head: onnx.ModelProto, calibration: Sequence[dict[str, np.ndarray]]) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise SplitInferError("quantising the head needs calibration inputs")
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared, target = (Path(tmp) / f"head.{stage}.onnx" for stage in ("fp32", "prepared", "int8"))
        onnx.save(head, str(source))
        # Fusing (Conv+BN, ...) and shape inference first, as the quantiser recommends: it then
        # quantises the ops that will really run.
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(target),
            _Feeds(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(str(target))


def to_ort_format(model: onnx.ModelProto) -> bytes:
    """The model in ORT format (a flatbuffer), optimised at the basic level as ORT Mobile expects."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry("session.save_model_format", "ORT")
    handle, path = tempfile.mkstemp(suffix=".ort")
    os.close(handle)
    try:
        options.optimized_model_filepath = path
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return Path(path).read_bytes()
    finally:
        os.remove(path)
