"""How a Profile's runs are timed: the sessions, the idle gap before each timed run, the
clock a run is timed by, and the settings of a measurement (ProfileSettings).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import onnx
import onnxruntime as ort

from protos import codec as wire_codec
from protos.errors import SplitInferError


@dataclass(frozen=True)
class ProfileSettings:
    edge_threads: int = 1
    server_threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    repeats: int = 10
    warmup: int = 2
    edge_slowdown: float = 1.0
    idle_gap_ms: float = 2.0
    codecs: tuple[str, ...] = field(default_factory=lambda: tuple(c.name for c in wire_codec.list_codecs()))

    def __post_init__(self) -> None:
        for name in ("edge_threads", "server_threads", "repeats"):
            if getattr(self, name) < 1:
                raise SplitInferError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise SplitInferError(f"warmup must be non-negative, got {self.warmup}")
        if self.idle_gap_ms < 0:
            raise SplitInferError(f"idle_gap_ms must be non-negative, got {self.idle_gap_ms}")
        if not self.edge_slowdown > 0:
            raise SplitInferError(f"edge_slowdown must be positive, got {self.edge_slowdown}")
        for name in self.codecs:
            wire_codec.Codec.parse(name)


def session(
    model: onnx.ModelProto | bytes, threads: int, providers: Iterable[str] = ("CPUExecutionProvider",)
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, options, providers=list(providers))


def median_ms(
    fn: Callable[[], object],
    repeats: int,
    warmup: int,
    idle_gap_ms: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    before: Callable[[], object] | None = None,
) -> float:
    """Median ms of `repeats` timed calls of `fn` after `warmup` untimed ones; each timed call
    follows the idle gap and then `before()`, untimed (what a request does just before it)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if idle_gap_ms:
            time.sleep(idle_gap_ms / 1e3)
        if before is not None:
            before()
        start = clock()
        fn()
        times.append((clock() - start) * 1e3)
    return statistics.median(times)


def run_clock(threads: int) -> Callable[[], float]:
    """The clock a session with `threads` intra-op threads is timed by: one thread runs the whole
    model in the calling thread, so that thread's CPU time is what the run costs a CPU of its own,
    without the time other processes on a shared machine take from it; several threads are timed
    by the wall clock (the calling thread's CPU time would miss the workers')."""
    return time.thread_time if threads == 1 else time.perf_counter
