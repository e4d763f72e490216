"""The rest of the model on the device, from a cut's tensors.

Two uses: the answer to a request the server could not take (EdgeClient's fallback), and the
device's side of a race (EdgeClient's `race_local`: the request is sent and the rest of the model
runs here at the same time; the first answer wins).

A multi-cut bundle that carries the all-on-device cut already holds the whole model in its head
segments, so the rest from any cut is the segments after it: the device stores no weight twice.
Otherwise the cut's tail.onnx (the server's half) is loaded on first use.

A run can be stopped from another thread with `Cancel`: onnxruntime abandons the session run under
way (RunOptions.terminate), no later segment starts, and the run raises `Cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import numpy as np
import onnxruntime as ort

from edge_runtime.head import HeadRunner, SegmentedHead, session_for
from protos.bundle import Bundle, MultiCutBundle
from protos.errors import SplitInferError


class Cancelled(SplitInferError):
    """The local run was stopped: the server answered first."""


class Cancel:
    """Stops one local run from another thread (single use: a terminated RunOptions stays so)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.run_options = ort.RunOptions()

    def cancel(self) -> None:
        self._event.set()
        self.run_options.terminate = True

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleeps up to `seconds`; True when cancelled meanwhile (a paced run's idle time)."""
        return self._event.wait(max(0.0, seconds))


class LocalTail:
    """`run(tensors, cut)`: the model outputs computed here from the tensors `cut` sends."""

    def __init__(self, bundle: Bundle | MultiCutBundle, head: HeadRunner | SegmentedHead, threads: int = 1) -> None:
        self.bundle = bundle
        self.threads = threads
        self._segments = head if isinstance(head, SegmentedHead) and head.whole_model_cut is not None else None
        self._lock = threading.Lock()
        self._tails: dict[str, ort.InferenceSession] = {}

    @property
    def source(self) -> str:
        """Where the rest of the model comes from: the head's segments or the cut's tail.onnx."""
        return "segments" if self._segments is not None else "tail.onnx"

    def run(self, tensors: Mapping[str, np.ndarray], cut: str, cancel: Cancel | None = None) -> dict[str, np.ndarray]:
        run_options = cancel.run_options if cancel is not None else None
        try:
            if self._segments is not None:
                return self._segments.run_from(tensors, cut, run_options)
            session, names = self._tail(cut)
            return dict(zip(names, session.run(names, dict(tensors), run_options)))
        except Exception as err:
            # onnxruntime reports a terminated run as a generic failure; the cancel says which it was.
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"the local run of cut {cut!r} was stopped") from err
            raise

    def _tail(self, cut: str) -> tuple[ort.InferenceSession, list[str]]:
        variant = self.bundle.variant(cut) if isinstance(self.bundle, MultiCutBundle) else self.bundle
        if variant.tail_path is None:
            raise SplitInferError(f"cut {cut!r} runs everything on the device: it has no tail to run here")
        with self._lock:
            session = self._tails.get(cut)
            if session is None:
                session = self._tails[cut] = session_for(variant.tail_path, self.threads)
        return session, [spec.name for spec in variant.manifest.outputs]
