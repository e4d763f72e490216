"""Predicting from a DeviceProfile (protos.device_profile: what one device takes to run each kind
of kernel, fitted by `splitinfer calibrate` on that device, and the power model that prices its
energy). With it, a model's per-cut head and tail latencies are predicted from the Graph alone,
for a device we cannot run on:

    session ms = fixed cost per run + hand-over cost per byte × bytes the session returns
               + Σ over the kernels onnxruntime runs for the session's ops (splitter.profile.predict.features)
                 of coefficients(kind) · features
               + Σ over the kinds of kernel present of the kind's cold start

A head is one session (its ops, returning the cut tensors), a tail another; fusions and layout
reorders are worked out for each, as onnxruntime does when it loads them.

`predicted_profile` makes a Profile of a model from DeviceProfiles: the head times for the edge
device's, the tail times for the server's (a side without one is measured here), marked in
`Profile.predicted_from`, with the edge device's power model for the energy policy. So a team plans
for a phone it cannot run on: `splitinfer calibrate` on the phone, `splitinfer profile MODEL
--edge-device phone.json` on a workstation. bench/predict.py measures how far off it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from protos.device_profile import DeviceProfile
from protos.errors import SplitInferError
from splitter.graph.cuts import Cut, device_ops
from splitter.graph.graph import Graph, Op
from splitter.pipeline import model_cuts
from splitter.profile.measure import profile_cuts
from splitter.profile.ops import profile_ops
from splitter.profile.predict.features import Kernel, kernels
from splitter.profile.schema import EngineInfo, Profile
from splitter.profile.timing import ProfileSettings
from splitter.sources import ModelSource


def kernel_ms(device: DeviceProfile, kernel: Kernel) -> float:
    coefficients = device.coefficients.get(kernel.op_class) or device.coefficients.get("other")
    if coefficients is None:
        raise SplitInferError(
            f"device profile {device.name!r} has no model for {kernel.op_class!r} kernels and no fallback"
        )
    ms = max(0.0, float(np.dot(coefficients, kernel.features)))
    if kernel.op_class == "conv_sum" and "Add" in device.coefficients:
        # A sum fused into its Conv never costs more than the same Add run on its own, as it
        # runs when a cut separates the two: otherwise a fit's noise could price a split
        # below the whole model. Features of that Add: one per element, both inputs read.
        nbytes = kernel.features[2]
        alone = (1.0, nbytes / 4, 2 * nbytes, nbytes, 0.0)
        ms = min(ms, max(0.0, float(np.dot(device.coefficients["Add"], alone))))
    return ms


def session_ms(device: DeviceProfile, graph: Graph, ops: Sequence[Op], outputs: Sequence[str]) -> float:
    """Predicted time of one run of a session holding `ops` and returning `outputs`."""
    found = kernels(graph, ops, outputs, device.nchwc_block)
    cold = sum(device.cold_ms.get(kind, 0.0) for kind in {k.op_class for k in found})
    handover = device.output_ms_per_byte * sum(graph.tensors[name].nbytes for name in outputs)
    return device.overhead_ms + handover + cold + sum(kernel_ms(device, k) for k in found)


def op_ms(device: DeviceProfile, graph: Graph) -> dict[str, float]:
    """Every op's share of a run of the whole model (fused ops 0; reorders to the op they serve)."""
    shares = {op.name: 0.0 for op in graph.ops}
    seen: set[str] = set()
    for kernel in kernels(graph, graph.ops, graph.outputs, device.nchwc_block):
        cold = device.cold_ms.get(kernel.op_class, 0.0) if kernel.op_class not in seen else 0.0
        seen.add(kernel.op_class)
        shares[kernel.op] += cold + kernel_ms(device, kernel)
    producer = {name: op.name for op in graph.ops for name in op.outputs}
    for name in graph.outputs:
        shares[producer[name]] += device.output_ms_per_byte * graph.tensors[name].nbytes
    return shares


def engine_info(device: DeviceProfile) -> EngineInfo:
    providers = tuple(device.engine.get("providers", ("CPUExecutionProvider",)))
    engine = str(device.engine.get("engine", "onnxruntime"))
    return EngineInfo(engine, str(device.engine.get("version", "")), device.threads, providers)


def uncovered(device: DeviceProfile, graph: Graph) -> set[str]:
    """Kinds of kernel of the graph that only the fallback model prices."""
    found = kernels(graph, graph.ops, graph.outputs, device.nchwc_block)
    return {k.op_class for k in found if k.op_class not in device.coefficients}


def head_ms(edge: DeviceProfile, graph: Graph, cut: Cut) -> float:
    """Predicted time of the cut's head (its ops, returning the cut tensors) on `edge`; 0 for none."""
    head = device_ops(graph, cut)
    return session_ms(edge, graph, head, cut.tensors) if head else 0.0


def tail_ms(server: DeviceProfile, graph: Graph, cut: Cut) -> float:
    """Predicted time of the cut's tail (the other ops, returning the model's outputs) on `server`."""
    names = {op.name for op in device_ops(graph, cut)}
    tail = [op for op in graph.ops if op.name not in names]
    return session_ms(server, graph, tail, graph.outputs) if tail else 0.0


def predict_cut_ms(edge: DeviceProfile, server: DeviceProfile, graph: Graph, cut: Cut) -> tuple[float, float]:
    """(head ms on `edge`, tail ms on `server`) of one cut; 0 for a side with no ops."""
    return head_ms(edge, graph, cut), tail_ms(server, graph, cut)


def predicted_profile(
    source: ModelSource,
    *,
    edge: DeviceProfile | None,
    server: DeviceProfile | None,
    settings: ProfileSettings = ProfileSettings(),
    progress: bool = False,
) -> Profile:
    """The Profile of a model whose head times (with `edge`) and/or tail times (with `server`) are
    predicted from DeviceProfiles rather than measured; a side without one is measured here as
    `profile_model` would. Bytes and codec errors are measured here either way (they do not depend
    on the device); so are encode and decode times, which the cost model charges to the device."""
    if edge is None and server is None:
        raise SplitInferError("a predicted profile needs an edge or a server DeviceProfile (or both)")
    if edge is not None and settings.edge_slowdown != 1.0:
        raise SplitInferError(
            f"edge_slowdown {settings.edge_slowdown:g} scales measured head times; predicted ones are the device's own"
        )
    # A predicted side runs with its DeviceProfile's threads (here only once, for the activations).
    settings = dataclasses.replace(
        settings,
        edge_threads=edge.threads if edge else settings.edge_threads,
        server_threads=server.threads if server else settings.server_threads,
    )
    graph = source.graph
    cuts = model_cuts(source, include_input=True)
    sample_name, feed = source.samples(1)[0]

    def predicted(cut: Cut) -> tuple[float | None, float | None]:
        return (head_ms(edge, graph, cut) if edge else None), (tail_ms(server, graph, cut) if server else None)

    track = (
        (lambda items: _track(list(items), description=f"profiling {len(cuts)} cuts", transient=True))
        if progress
        else iter
    )
    profile = profile_cuts(
        source.model,
        source.model_id,
        cuts,
        feed,
        settings,
        sample_name=sample_name,
        progress=track,
        predicted_ms=predicted,
        graph=graph,
    )
    sides = {"edge": edge, "server": server}
    ops = profile_ops(
        source.model,
        feed,
        settings,
        edge_times=(op_ms(edge, graph), edge.overhead_ms) if edge else None,
        server_times=(op_ms(server, graph), server.overhead_ms) if server else None,
        times_source="; ".join(
            f"{side}: {device.describe() if device else 'measured by the onnxruntime profiler'}"
            for side, device in sides.items()
        ),
        graph=graph,
    )
    return dataclasses.replace(
        profile,
        ops=ops,
        edge=engine_info(edge) if edge else profile.edge,
        server=engine_info(server) if server else profile.server,
        power=edge.power if edge else profile.power,
        predicted_from={side: device.describe() for side, device in sides.items() if device},
    )


def _track(items: list, **kwargs: object) -> Iterable:
    from rich.progress import track

    return track(items, **kwargs)
