"""One cell's measurement: a real server in its own process, pinned, behind a netemu link shaped to
the cell's condition, and the real EdgeClient on the device's CPUs (its head, encoder and local tail
paced or stretched as the emulated device runs them), sending the evaluation samples one request at
a time in a closed loop; every request becomes a RequestRecord with its timings, its agreement with
the unsplit model, the rate it met, and at that moment the oracle's best over the adaptive
bundle's choices and the bound's over every cut (experiment.oracle).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from experiment.config import ADAPTIVE, ExperimentConfig, split_race
from experiment.device import (
    DeviceSetup,
    PacedEncoder,
    PacedHead,
    PacedLocalTail,
    StretchedHead,
    StretchedLocalTail,
    cgroup_quota,
)
from experiment.grid import Cell, planning_network
from experiment.prepare import CellRun, PreparedModel
from experiment.results import RequestRecord
from protos.errors import SplitInferError

# A request may wait this long for its answer: a raw image at CAT1's 0.13 Mbit/s takes ~40 s.
_REQUEST_TIMEOUT_S = 300.0
_FAILED = dict(
    bytes_sent=0,
    request_bytes=0,
    response_bytes=0,
    head_ms=math.nan,
    encode_ms=math.nan,
    network_ms=math.nan,
    decode_ms=math.nan,
    tail_ms=math.nan,
    total_ms=math.nan,
    agree=False,
)


def measure(
    cell: Cell,
    run: CellRun,
    state: PreparedModel,
    config: ExperimentConfig,
    device: DeviceSetup,
    link_model,
    oracles,
    advance: Callable[[float], Any],
) -> list[RequestRecord]:
    """The cell's requests, recorded; `advance` is told each request (or second) done."""
    from edge_runtime.client import EdgeClient

    with contextlib.ExitStack() as stack:
        link = _open_link(stack, cell, run, config, device, link_model.trace) if run.has_tail else None
        stack.enter_context(_pinned(set(device.edge_cpus)))
        adaptive = split_race(cell.policy)[0] == ADAPTIVE
        parts = device_parts(run, state, device, adaptive)
        edge_config = _edge_config(cell, run, config, device)
        address = link.address if link is not None else None
        client = stack.enter_context(EdgeClient(run.bundle, address, edge_config, **parts))
        if device.method == "cgroup":
            # After the client is built: loading the head is installation, not a request's work.
            stack.enter_context(cgroup_quota(device.slowdown))
        for i in range(config.warmup_requests):
            client.infer(state.samples[i % len(state.samples)][1])
        origin = (link.trace_origin_s() if link is not None else None) or time.monotonic()
        records: list[RequestRecord] = []
        started = time.monotonic()
        while _more(config, len(records), time.monotonic() - started):
            record, infer_s = _request(cell, run, state, client, link, link_model, oracles, origin, len(records))
            records.append(record)
            advance(1 if config.requests is not None else infer_s)
    return records


def _open_link(stack: contextlib.ExitStack, cell: Cell, run: CellRun, config: ExperimentConfig, device, trace):
    """The server on its CPUs, and the link shaped to the condition in front of it."""
    from cloud_runtime.config import ServerConfig
    from cloud_runtime.process import start_server_process
    from netemu import Shape, open_link

    condition = cell.condition
    server_config = ServerConfig([run.path], threads=len(device.server_cpus))
    server = stack.enter_context(start_server_process(server_config, cpus=set(device.server_cpus)))
    half_rtt_ms = condition.rtt_ms / 2
    uplink = Shape(rate_bps=condition.rate_bps, trace=trace, delay_ms=half_rtt_ms, loss=condition.loss)
    downlink = Shape(rate_bps=condition.down_bps, delay_ms=half_rtt_ms, loss=condition.loss)
    # Started before this thread is pinned: the link's own thread keeps every CPU.
    return stack.enter_context(open_link(condition.backend, server.address, uplink, downlink, seed=config.seed))


def _edge_config(cell: Cell, run: CellRun, config: ExperimentConfig, device: DeviceSetup):
    from edge_runtime.adaptive import AdaptiveSettings
    from edge_runtime.config import EdgeConfig

    policy, race = split_race(cell.policy)
    if policy != ADAPTIVE:
        return EdgeConfig(codec=run.codec, threads=device.threads, timeout_s=_REQUEST_TIMEOUT_S, race_local=race)
    adaptive = config.adaptive
    settings = AdaptiveSettings(margin=adaptive.margin, confirm=adaptive.confirm, explore_s=adaptive.explore_s)
    # It starts from what a planner would know of the condition: its mean rate and RTT.
    return EdgeConfig(
        threads=device.threads,
        timeout_s=_REQUEST_TIMEOUT_S,
        adaptive=settings,
        initial_bandwidth_bps=planning_network(cell.condition).bandwidth_bps,
        initial_rtt_ms=cell.condition.rtt_ms,
        race_local=race,
    )


def _request(
    cell: Cell, run: CellRun, state: PreparedModel, client, link, link_model, oracles, origin: float, index: int
) -> tuple[RequestRecord, float]:
    """One request sent and recorded, failed or not; and the seconds the client took on it."""

    name, feed = state.samples[index % len(state.samples)]
    t_s, unix = time.monotonic() - origin, time.time()
    # Without a link (all on the device) the rate the request would have met is still recorded.
    trace = link_model.trace
    if link is not None:
        rate = link.rate_bps_now("up")
    else:
        rate = trace.rate_bps_at(t_s) if trace is not None else cell.condition.rate_bps
    (best, best_ms), (bound, bound_ms) = oracles.at(link_model, t_s)
    base = dict(
        t_s=t_s,
        unix_time=unix,
        model=cell.model.label,
        policy=cell.policy,
        codec=cell.codec,
        condition=cell.condition.name,
        request=index,
        sample=name,
        rate_mbps=rate / 1e6 if rate is not None else math.nan,
        oracle_cut=best.cut,
        oracle_ms=best_ms,
        bound_cut=bound.cut,
        bound_ms=bound_ms,
    )
    before = time.monotonic()
    try:
        result = client.infer(feed)
    except SplitInferError as err:
        cut = "" if split_race(cell.policy)[0] == ADAPTIVE else run.cut
        return RequestRecord(
            **base,
            cut=cut,
            head_size=run.head_size,
            predicted_ms=run.predicted_ms,
            **_FAILED,
            error=f"{type(err).__name__}: {err}",
        ), time.monotonic() - before
    infer_s = time.monotonic() - before
    return _answered(base, result, run, state, name), infer_s


def _answered(base: dict, result, run: CellRun, state: PreparedModel, sample: str) -> RequestRecord:
    """The record of a request the client answered (the server, or the device)."""
    t = result.timing
    top1 = int(np.argmax(next(iter(result.outputs.values()))))
    decision = result.decision
    estimate = decision.estimate.bandwidth_bps if decision is not None else None
    return RequestRecord(
        **base,
        cut=result.cut,
        head_size=state.profile.cut(result.cut).head_size,
        predicted_ms=decision.predicted_ms if decision is not None else run.predicted_ms,
        bytes_sent=result.bytes_sent,
        request_bytes=result.request_bytes,
        response_bytes=result.response_bytes,
        head_ms=t.head_ms,
        encode_ms=t.encode_ms,
        network_ms=t.network_ms,
        decode_ms=t.decode_ms,
        tail_ms=t.tail_ms,
        total_ms=t.total_ms,
        agree=top1 == state.reference_top1[sample],
        wire_codec=result.codec,
        estimate_mbps=estimate / 1e6 if estimate is not None else math.nan,
        winner=result.winner,
        queue_ms=t.queue_ms,
        outputs_ms=t.output_encode_ms + t.output_decode_ms,
        other_ms=t.other_ms,
    )


def device_parts(run: CellRun, state: PreparedModel, device: DeviceSetup, adaptive: bool) -> dict[str, Any]:
    """The emulated device's head, encoder and local tail for EdgeClient's constructor: the parts the
    client would make, paced to the profile or stretched by the slowdown (none to replace otherwise)."""
    from edge_runtime.local_tail import LocalTail
    from edge_runtime.parts import TensorEncoder, load_head

    if device.method != "paced" and device.stretch_factor == 1.0:
        return {}
    head = load_head(run.bundle, device.threads)
    local_tail = LocalTail(run.bundle, head, threads=device.threads)
    if device.method == "paced":
        heads, encodings, rests = _paces(state.profile)
        return {
            "head": PacedHead(head, heads, None if adaptive else run.cut),
            "encoder": PacedEncoder(TensorEncoder(), encodings),
            "local_tail": PacedLocalTail(local_tail, rests),
        }
    return {
        "head": StretchedHead(head, device.stretch_factor),
        "local_tail": StretchedLocalTail(local_tail, device.stretch_factor),
    }


def _paces(profile) -> tuple[dict[str, float], dict[tuple[str, str], float], dict[str, float]]:
    """What a paced device takes, in ms: each cut's head; each (cut, codec)'s encoding, with the
    in-request overhead; the rest of the model from each cut (all on the device minus the head)."""
    from splitter.cost.cut_cost import device_encode_ms, monotone_times

    slowdown = profile.edge_slowdown
    times = monotone_times(profile)
    heads = {name: head_ms * slowdown for name, (head_ms, _) in times.items()}
    whole_ms = max(heads[cut.name] for cut in profile.cuts if cut.is_edge_only)
    encodings = {
        (cut.name, codec): device_encode_ms(profile, codec, measured.encode_ms)
        for cut in profile.cuts
        for codec, measured in cut.codecs.items()
    }
    rests = {name: max(0.0, whole_ms - head_ms) for name, head_ms in heads.items()}
    return heads, encodings, rests


def _more(config: ExperimentConfig, done: int, elapsed_s: float) -> bool:
    if config.requests is not None:
        return done < config.requests
    return elapsed_s < (config.seconds or 0.0)


@contextlib.contextmanager
def _pinned(cpus: set[int]) -> Iterator[None]:
    """This thread (and the threads it starts: gRPC's) on `cpus` while the block runs."""
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)
