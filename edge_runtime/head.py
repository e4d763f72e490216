"""The device's half of the model: runs a bundle's head.onnx on the CPU and returns the tensors at
the cut, keyed by the manifest's cut names. `SegmentedHead` runs the head of a multi-cut bundle,
stored in segments, up to the cut asked for.

Inputs are checked against the manifest (names, dtypes, shapes) where they enter, so a wrong input
is a `TensorSpecError` naming the input and the rule rather than an onnxruntime failure. A bundle
without a head (the cut sends the raw input) passes the inputs through; a bundle without a tail (the
whole model runs on the device) returns the model outputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from protos.bundle import Bundle, MultiCutBundle, TensorSpec
from protos.errors import BundleError, TensorSpecError
from protos.head_encryption import decrypt, device_key, read_key


def session_for(model: str | Path | bytes, threads: int) -> ort.InferenceSession:
    """A CPU session of the model in file `model`, or of the model's bytes (a decrypted head)."""
    options = ort.SessionOptions()
    # The device's compute budget is the experiment's knob: exactly `threads`, no more.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def check_inputs(specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model inputs as arrays, after checking names, dtypes and shapes against `specs`."""
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
                f"input {spec.name!r} has shape {list(array.shape)}, the model needs {list(spec.shape)} (-1: any size)"
            )
        feed[spec.name] = array
    return feed


class HeadRunner:
    """`head_key`: the key file of an encrypted head (protos.head_encryption; None: the
    environment's SPLITINFER_HEAD_KEY); the head is decrypted into memory, never onto storage."""

    def __init__(self, bundle: Bundle, threads: int = 1, head_key: str | Path | None = None) -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        # With no tail the head is the whole model, and what it hands on are the model outputs.
        self.output_specs: tuple[TensorSpec, ...] = manifest.cut if manifest.has_tail else manifest.outputs
        self.session: ort.InferenceSession | None = None
        # A key file given is read even for a head in clear: a wrong path is reported, not skipped.
        key = read_key(head_key) if head_key is not None else None
        if bundle.head_path is not None:
            model: Path | bytes = bundle.head_path
            if manifest.head_encrypted:
                key = key if key is not None else device_key(None)
                model = decrypt(bundle.head_path.read_bytes(), key, str(bundle.head_path))
            session = session_for(model, threads)
            self._check_session(session)
            self.session = session

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = check_inputs(self.bundle.manifest.inputs, inputs)
        if self.session is None:
            return {spec.name: feed[spec.name] for spec in self.output_specs}
        names = [spec.name for spec in self.output_specs]
        return dict(zip(names, self.session.run(names, feed)))

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


class SegmentedHead:
    """The head of a multi-cut bundle: its segments, each loaded once, run in order up to the
    requested cut (the weights of a deeper cut's head are never touched for a shallower one)."""

    def __init__(self, bundle: MultiCutBundle, threads: int = 1) -> None:
        self.bundle = bundle
        manifest = bundle.manifest
        self.inputs = manifest.cuts[0].inputs
        self._sessions: list[tuple[tuple[str, ...], ort.InferenceSession]] = []
        for segment in manifest.segments:
            session = session_for(bundle.segment_path(segment), threads)
            have = {o.name for o in session.get_outputs()}
            missing = [name for name in segment.outputs if name not in have]
            if missing:
                raise BundleError(
                    f"{bundle.segment_path(segment)}: lacks outputs {missing} named by the manifest; it has {sorted(have)}"
                )
            self._sessions.append((segment.inputs, session))
        self._plans = {
            cut.cut_name: (count, tuple(s.name for s in (cut.cut if cut.has_tail else cut.outputs)))
            for cut, count in zip(manifest.cuts, manifest.segment_counts)
        }
        # The all-on-device cut's segments are the whole model: the rest of it from any cut
        # (run_from) needs no weights beyond the head's.
        self.whole_model_cut = next((cut.cut_name for cut in manifest.cuts if not cut.has_tail), None)

    def run(self, inputs: Mapping[str, np.ndarray], cut: str) -> dict[str, np.ndarray]:
        """The tensors `cut` sends (its model outputs when it runs everything here)."""
        plan = self._plans.get(cut)
        if plan is None:
            raise BundleError(
                f"multi-cut bundle {str(self.bundle.path)!r} has no cut {cut!r}; it has {sorted(self._plans)}"
            )
        count, names = plan
        values = check_inputs(self.inputs, inputs)
        self._run_segments(values, 0, count)
        return {name: values[name] for name in names}

    def run_from(
        self, tensors: Mapping[str, np.ndarray], cut: str, run_options: ort.RunOptions | None = None
    ) -> dict[str, np.ndarray]:
        """The model outputs, from the tensors `cut` sends: the segments after it, up to the
        all-on-device cut. `run_options` lets another thread stop the run (RunOptions.terminate)."""
        if self.whole_model_cut is None:
            raise BundleError(
                f"multi-cut bundle {str(self.bundle.path)!r} does not carry the all-on-device cut: it has no rest of the model"
            )
        if cut not in self._plans:
            raise BundleError(
                f"multi-cut bundle {str(self.bundle.path)!r} has no cut {cut!r}; it has {sorted(self._plans)}"
            )
        count, outputs = self._plans[self.whole_model_cut]
        values = dict(tensors)
        self._run_segments(values, self._plans[cut][0], count, run_options)
        return {name: values[name] for name in outputs}

    def _run_segments(
        self, values: dict[str, np.ndarray], first: int, end: int, run_options: ort.RunOptions | None = None
    ) -> None:
        segments = self.bundle.manifest.segments
        for (needs, session), segment in zip(self._sessions[first:end], segments[first:end]):
            missing = [n for n in needs if n not in values]
            if missing:
                raise BundleError(f"{self.bundle.segment_path(segment)} needs tensors {missing} that were not given")
            values.update(
                zip(segment.outputs, session.run(list(segment.outputs), {n: values[n] for n in needs}, run_options))
            )
