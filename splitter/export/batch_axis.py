"""A tail that takes a batch: axis 0 of its inputs and outputs relaxed to a symbolic dimension, and
checked, so the server may run several devices' requests as one call.

Export cuts tails with the example input's fixed batch of 1. `batchable_tail` rewrites axis 0 of
every graph input and output to the symbolic dimension `batch`, drops the intermediate shapes that
shape inference recorded for batch 1 (onnxruntime would trust them), and then proves the rewrite:
a batch of 3 random inputs must give, row for row, what three single runs give. A tail that
cannot batch (an output without the batch axis, a Reshape with the batch of 1 folded into its
constant shape, an op that mixes samples) fails the check and is kept as exported: the server
then runs it one request at a time. The check, not the graph's look, decides.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort

log = logging.getLogger(__name__)

BATCH_DIM = "batch"
CHECK_BATCH = 3
# Batched kernels may sum in another order than single ones; anything beyond rounding is a bug.
CHECK_TOLERANCE = 1e-5


@dataclass(frozen=True)
class BatchCheck:
    """The outcome of `check_batching`: `reason` says why a tail is not batchable ("" when it is)."""

    batchable: bool
    reason: str = ""
    max_abs_diff: float = 0.0


def relax_batch_dim(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with axis 0 of every graph input and output symbolic (`batch`).

    Raises ValueError naming the tensor when one has no axis 0 or a different batch size from the
    others (its rows could not be handed back to the requests they came from)."""
    relaxed = copy.deepcopy(model)
    graph = relaxed.graph
    initializers = {t.name for t in graph.initializer}
    tensors = [v for v in graph.input if v.name not in initializers] + list(graph.output)
    batch_sizes = set()
    for value in tensors:
        dims = value.type.tensor_type.shape.dim
        if not value.type.HasField("tensor_type") or len(dims) == 0:
            raise ValueError(f"tensor {value.name!r} has no axis 0 to batch along")
        batch_sizes.add(dims[0].dim_value if dims[0].HasField("dim_value") else dims[0].dim_param)
    if len(batch_sizes) > 1:
        raise ValueError(f"inputs and outputs disagree on axis 0 ({sorted(map(str, batch_sizes))}): not one batch axis")
    for value in tensors:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    # Recorded for batch 1; left in place they contradict the symbolic inputs.
    del graph.value_info[:]
    return relaxed


def check_batching(
    model: onnx.ModelProto, *, batch: int = CHECK_BATCH, tolerance: float = CHECK_TOLERANCE, seed: int = 0
) -> BatchCheck:
    """Runs `batch` random samples as one batch and one by one; batchable when every output row
    agrees within `tolerance` (absolute, relative to max(1, |value|))."""
    try:
        session = ort.InferenceSession(model.SerializeToString(), _single_thread(), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types for a graph it refuses
        return BatchCheck(False, f"onnxruntime refuses the relaxed graph: {err}")
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(batch):
        feed = _random_feed(session, rng)
        if isinstance(feed, str):
            return BatchCheck(False, feed)
        samples.append(feed)
    names = [o.name for o in session.get_outputs()]
    try:
        singles = [session.run(names, feed) for feed in samples]
        joined = {name: np.concatenate([feed[name] for feed in samples]) for name in samples[0]}
        batched = session.run(names, joined)
    except Exception as err:
        return BatchCheck(False, f"a batch of {batch} fails: {type(err).__name__}: {err}")
    worst = 0.0
    for index, name in enumerate(names):
        expected = np.concatenate([single[index] for single in singles])
        got = batched[index]
        if got.shape != expected.shape:
            return BatchCheck(
                False, f"output {name!r} of a batch of {batch} has shape {list(got.shape)}, not {list(expected.shape)}"
            )
        if got.size:
            scale = np.maximum(1.0, np.abs(expected.astype(np.float64)))
            worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - expected) / scale)))
    if not worst <= tolerance:
        return BatchCheck(
            False, f"a batch of {batch} differs from single runs by {worst:.3g} (tolerance {tolerance:g})", worst
        )
    return BatchCheck(True, "", worst)


def batchable_tail(tail: onnx.ModelProto | None) -> tuple[onnx.ModelProto | None, bool]:
    """(tail with a batch axis, True) when the relaxed tail passes `check_batching`, else
    (the tail as it was, False). None (no tail) stays None."""
    if tail is None:
        return None, False
    try:
        relaxed = relax_batch_dim(tail)
    except ValueError as err:
        log.info("tail not batchable: %s", err)
        return tail, False
    check = check_batching(relaxed)
    if not check.batchable:
        log.info("tail not batchable: %s", check.reason)
        return tail, False
    return relaxed, True


def _single_thread() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return options


# What a random sample of each input type is drawn as; other types (strings, bools) are not checked.
_SAMPLE_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
}


def _random_feed(session: ort.InferenceSession, rng: np.random.Generator) -> dict[str, np.ndarray] | str:
    """One sample (axis 0 of size 1) per input, or why none can be drawn."""
    feed = {}
    for value in session.get_inputs():
        dtype = _SAMPLE_DTYPES.get(value.type)
        if dtype is None:
            return f"input {value.name!r} has type {value.type}, which the check cannot sample"
        shape = [1, *value.shape[1:]]
        if not all(isinstance(d, int) for d in shape):
            return f"input {value.name!r} has symbolic axes beyond the batch: {value.shape}"
        feed[value.name] = (rng.standard_normal(shape) * 2).astype(dtype)
    return feed
