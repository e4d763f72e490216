"""The device's half of the model: runs a bundle's head.onnx on the CPU and returns the tensors at
the cut, keyed by the manifest's cut names.

Inputs are checked against the manifest (names, dtypes, shapes) where they enter, so a wrong input
is a `TensorSpecError` naming the input and the rule rather than an onnxruntime failure. A bundle
without a head (the cut sends the raw input) passes the inputs through; a bundle without a tail (the
whole model runs on the device) returns the model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from protos.bundle import Bundle, TensorSpec
from protos.errors import BundleError, TensorSpecError


class HeadRunner:
    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        # With no tail the head is the whole model, and what it hands on are the model outputs.
        self.output_specs: tuple[TensorSpec, ...] = manifest.cut if manifest.has_tail else manifest.outputs
        self.session: ort.InferenceSession | None = None
        if bundle.head_path is not None:
            options = ort.SessionOptions()
            # The device's compute budget is the experiment's knob: exactly `threads`, no more.
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(bundle.head_path), options, providers=["CPUExecutionProvider"])
            self._check_session(session)
            self.session = session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = self._check_inputs(inputs)
        if self.session is None:
            return {spec.name: feed[spec.name] for spec in self.output_specs}
        names = [spec.name for spec in self.output_specs]
        return dict(zip(names, self.session.run(names, feed)))

    def _check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = self.bundle.manifest.inputs
        expected = [spec.name for spec in specs]
        missing = [name for name in expected if name not in inputs]
        extra = sorted(set(inputs) - set(expected))
        if missing or extra:
            raise TensorSpecError(f"model inputs are {expected}; missing {missing}, unexpected {extra}")
        feed: dict[str, np.ndarray] = {}
        for spec in specs:
            array = np.asarray(inputs[spec.name])
            if array.dtype != np.dtype(spec.dtype):
                raise TensorSpecError(f"input {spec.name!r} has dtype {array.dtype}, the model needs {spec.dtype}")
            if not spec.accepts(array.shape):
                raise TensorSpecError(
                    f"input {spec.name!r} has shape {list(array.shape)}, "
                    f"the model needs {list(spec.shape)} (-1: any size)"
                )
            feed[spec.name] = array
        return feed

    def _check_session(self, session: ort.InferenceSession) -> None:
        path = self.bundle.head_path
        inputs = sorted(i.name for i in session.get_inputs())
        expected = sorted(spec.name for spec in self.bundle.manifest.inputs)
        if inputs != expected:
            raise BundleError(f"{path}: inputs {inputs} are not the manifest's {expected}")
        outputs = {o.name for o in session.get_outputs()}
        missing = [spec.name for spec in self.output_specs if spec.name not in outputs]
        if missing:
            raise BundleError(f"{path}: lacks outputs {missing} named by the manifest; it has {sorted(outputs)}")
