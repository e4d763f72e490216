"""Serving under load: N concurrent edge clients against one `splitinfer serve` process on loopback,
beside raw batched onnxruntime running the same tail on the same CPU.

For each N (default 1, 8, 32, 128) the clients send requests back to back for `--duration`
seconds after a `--warmup`; the script prints throughput, client-side latency percentiles, errors
by status code, the server's batch-size histogram (from its /metrics) and the ratio of the
throughput to raw onnxruntime running the tail alone on batches of the observed mean size, fed
tensors already decoded. The bundle is the default model cut mid-network (`mobilenet_v2` at
`features.7`, int8+zstd), exported here unless `--bundle` names one.

What a client does: each sends the cut tensors of a real photo, run through the bundle's head
and encoded with the bundle's codec once at start-up (a pool of photos, cycled), with a fresh
request_id per request, waits for the reply and decodes its outputs. Running the head per request
would make the clients the bottleneck of a two-core machine and measure the device, not the
server. Clients are threads in `--processes` processes (spawned, each with its own GIL), one gRPC
channel per client, as separate devices would have.

CPUs: by default the server (onnxruntime with one intra-op thread) and the raw-onnxruntime baseline
share the last CPU, the clients the others (on a two-core machine: server CPU 1, clients CPU 0),
so the ratio compares the same core doing the same tail with and without the serving stack. The
baseline runs right after each load level, while the server sits idle.
`--no-pin` lets everything share every CPU.

    .venv/bin/python bench/serve_load.py [--clients 1,8,32,128] [--duration 10] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from protos.bundle import Bundle, load_bundle
from protos.codec import Codec, decode, encode
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

DEFAULT_CUT = "features.7"
TARGET_RATIO = 0.9
TARGET_CLIENTS = 32
RAW_SECONDS = 4.0
# The bundle only has to be served: the untrained network's int8 flips (about 1 in 9 photos)
# are no concern of a serving benchmark, so export's accuracy budget is set wide.
SERVING_ONLY_BUDGET = 0.5


@dataclass(frozen=True)
class ClientReport:
    """What one client process saw: latencies (ms) of requests answered OK within the measured
    window, and every failure's status code, warm-up included."""

    latencies_ms: tuple[float, ...]
    errors: tuple[str, ...]


@dataclass(frozen=True)
class Level:
    """One client count's measured window, and the raw-onnxruntime baseline measured after it."""

    clients: int
    layout: str  # client processes × threads
    duration_s: float
    latencies_ms: tuple[float, ...]
    errors: Counter
    batches: dict[float, float]  # batch-size bucket's upper bound → batches in the window
    mean_batch: float
    server_cpu_s: float  # CPU time the server process used in the window
    raw_batch: int
    raw_per_s: float
    raw_per_cpu_s: float

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.duration_s

    @property
    def ratio(self) -> float:
        return self.throughput / self.raw_per_s

    @property
    def cpu_ratio(self) -> float:
        """Requests per server CPU-second over raw samples per CPU-second: what the serving stack
        costs, blind to other processes taking the CPU from either (the machine is shared)."""
        return len(self.latencies_ms) / self.server_cpu_s / self.raw_per_cpu_s if self.server_cpu_s else float("nan")

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def encoded_requests(bundle: Bundle, count: int) -> list[pb.InferRequest]:
    """Requests for `count` photos as the edge client would send them (head run once, here)."""
    from edge_runtime.head import HeadRunner
    from splitter.models.photos import evaluation_photos

    manifest = bundle.manifest
    head = HeadRunner(bundle, threads=1)
    codec = Codec.parse(manifest.codec)
    images = [photo.image for photo in evaluation_photos()]
    requests = []
    for index in range(count):
        image = images[index % len(images)]
        cut = head.run({manifest.inputs[0].name: manifest.preprocess(image)})
        requests.append(
            pb.InferRequest(
                model_id=manifest.model_id,
                bundle_hash=manifest.bundle_hash,
                tensors=[encode(name, array, codec) for name, array in cut.items()],
            )
        )
    return requests


def _client_process(
    address: str,
    payloads: list[bytes],
    threads: int,
    start: float,
    stop: float,
    end: float,
    cpus: set[int] | None,
    out: multiprocessing.Queue,
) -> None:
    """`threads` clients until `end` (time.monotonic()); reports what finished in [start, stop)."""
    if cpus:
        os.sched_setaffinity(0, cpus)
    requests = [pb.InferRequest.FromString(p) for p in payloads]
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[list[str]] = [[] for _ in range(threads)]

    def client(index: int) -> None:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.SplitInferenceStub(channel)
        mine, failed = latencies[index], errors[index]
        n = index
        while True:
            now = time.monotonic()
            if now >= end:
                break
            request = requests[n % len(requests)]
            request.request_id = uuid.uuid4().hex
            n += 1
            try:
                response = stub.Infer(request, timeout=30)
                for tensor in response.outputs:
                    decode(tensor)
            except grpc.RpcError as err:
                failed.append(err.code().name)
                continue
            done = time.monotonic()
            if start <= done < stop:
                mine.append((done - now) * 1e3)
        channel.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out.put(ClientReport(tuple(x for xs in latencies for x in xs), tuple(x for xs in errors for x in xs)))


def batch_histogram(metrics_url: str) -> dict[str, float]:
    """The server's splitinfer_batch_size samples, summed over models: cumulative bucket counts
    keyed by their upper bound ("1.0", ..., "+Inf"), and "sum" and "count"."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    values: Counter = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "splitinfer_batch_size_bucket":
                values[sample.labels["le"]] += sample.value
            elif sample.name in ("splitinfer_batch_size_sum", "splitinfer_batch_size_count"):
                values[sample.name.rsplit("_", 1)[1]] += sample.value
    return dict(values)


def per_bucket(before: dict[str, float], after: dict[str, float]) -> dict[float, float]:
    """Batches per bucket (not cumulative) between two scrapes, keyed by the bucket's upper bound."""
    counts, below = {}, 0.0
    for bound in sorted(float(k) for k in after if k not in ("sum", "count")):
        key = "+Inf" if bound == float("inf") else str(bound)
        cumulative = after[key] - before.get(key, 0.0)
        counts[bound] = cumulative - below
        below = cumulative
    return counts


def mean_batch(before: dict[str, float], after: dict[str, float]) -> float:
    """Requests per batch between two scrapes."""
    batches = after.get("count", 0.0) - before.get("count", 0.0)
    return (after.get("sum", 0.0) - before.get("sum", 0.0)) / batches if batches else 0.0


def raw_throughput(
    bundle: Bundle, requests: list[pb.InferRequest], batch: int, cpus: set[int] | None
) -> tuple[float, float]:
    """Samples per second and per CPU-second of the tail alone on batches of `batch` decoded
    tensors, in a child pinned to `cpus`."""
    script = (
        "import os, sys, time, numpy as np, onnxruntime as ort\n"
        "cpus = eval(sys.argv[4])\n"
        "if cpus: os.sched_setaffinity(0, cpus)\n"
        "feed = dict(np.load(sys.argv[2]))\n"
        "options = ort.SessionOptions(); options.intra_op_num_threads = 1\n"
        "options.add_session_config_entry('session.intra_op.allow_spinning', '0')\n"
        "session = ort.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])\n"
        "for _ in range(3): session.run(None, feed)\n"
        "runs, start, cpu = 0, time.perf_counter(), time.process_time()\n"
        "while time.perf_counter() - start < float(sys.argv[3]):\n"
        "    session.run(None, feed); runs += 1\n"
        "rows = next(iter(feed.values())).shape[0]\n"
        "print(rows * runs / (time.perf_counter() - start), rows * runs / (time.process_time() - cpu))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        decoded = [{t.name: decode(t) for t in r.tensors} for r in requests]
        feed = {name: np.concatenate([decoded[i % len(decoded)][name] for i in range(batch)]) for name in decoded[0]}
        np.savez(Path(tmp) / "feed.npz", **feed)
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                script,
                str(bundle.tail_path),
                str(Path(tmp) / "feed.npz"),
                str(RAW_SECONDS),
                repr(cpus),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    wall, cpu = result.stdout.split()
    return float(wall), float(cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_level(
    server_pid: int,
    address: str,
    metrics_url: str,
    payloads: list[bytes],
    clients: int,
    processes: int,
    warmup_s: float,
    duration_s: float,
    cpus: set[int] | None,
) -> tuple[str, tuple[float, ...], Counter, dict[float, float], float, float]:
    """(layout, latencies, errors, batches per bucket, mean batch, server CPU s) of one window."""
    processes = max(1, min(processes, clients))
    threads = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    # Spawned children need a moment to import; the clock starts once they have had it.
    start = time.monotonic() + 3.0 + warmup_s
    stop = start + duration_s
    children = [
        context.Process(target=_client_process, args=(address, payloads, n, start, stop, stop, cpus, out))
        for n in threads
    ]
    for child in children:
        child.start()
    time.sleep(max(0.0, start - time.monotonic()))
    before, cpu_before = batch_histogram(metrics_url), cpu_seconds(server_pid)
    time.sleep(max(0.0, stop - time.monotonic()))
    after, cpu_after = batch_histogram(metrics_url), cpu_seconds(server_pid)
    reports = [out.get(timeout=120) for _ in children]
    for child in children:
        child.join(30)
    latencies = tuple(x for r in reports for x in r.latencies_ms)
    errors = Counter(code for r in reports for code in r.errors)
    layout = f"{processes}×{threads[0]}" if len(set(threads)) == 1 else "+".join(map(str, threads))
    return layout, latencies, errors, per_bucket(before, after), mean_batch(before, after), cpu_after - cpu_before


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a bundle directory (default: export mobilenet_v2 at features.7)")
    parser.add_argument("--clients", default="1,8,32,128", help="comma-separated client counts")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per client count")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--processes", type=int, default=4, help="client processes (threads split among them)")
    parser.add_argument("--photos", type=int, default=8, help="distinct requests the clients cycle through")
    parser.add_argument("--batch-window-ms", type=float, default=2.0)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-queue", type=int, default=128)
    parser.add_argument("--no-pin", action="store_true", help="let server, baseline and clients share every CPU")
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="load-aware edges against static ones on one server (bench/load_aware.py; --clients N, default 64)",
    )
    args = parser.parse_args()
    if args.adaptive:
        import load_aware

        args.clients = int(args.clients) if args.clients.isdigit() else 64
        load_aware.main(args)
        return
    counts = [int(n) for n in args.clients.split(",")]

    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        server_cpus, client_cpus = None, None
    else:
        server_cpus, client_cpus = {cpus[-1]}, set(cpus[:-1])
    print(f"CPUs: server and raw onnxruntime {sorted(server_cpus or cpus)}, clients {sorted(client_cpus or cpus)}")

    with tempfile.TemporaryDirectory() as tmp:
        if args.bundle is None:
            from splitter.pipeline import export_model

            print(f"exporting mobilenet_v2 at {DEFAULT_CUT} (int8+zstd) ...", flush=True)
            bundle, _ = export_model(
                "mobilenet_v2", Path(tmp) / "bundle", cut=DEFAULT_CUT, codec="int8+zstd", max_error=SERVING_ONLY_BUDGET
            )
        else:
            bundle = load_bundle(args.bundle)
        manifest = bundle.manifest
        print(
            f"bundle: {manifest.model_id} cut {manifest.cut_name!r}, codec {manifest.codec}, batchable {manifest.batchable}"
        )
        requests = encoded_requests(bundle, args.photos)
        payloads = [r.SerializeToString() for r in requests]
        print(
            f"request: {len(payloads[0])} bytes; batching: window {args.batch_window_ms:g} ms, "
            f"max batch {args.max_batch}, max queue {args.max_queue}",
            flush=True,
        )

        from cloud_runtime.batch_queue import BatchingConfig
        from cloud_runtime.config import ServerConfig
        from cloud_runtime.process import start_server_process

        metrics_port = _free_port()
        batching = BatchingConfig(window_ms=args.batch_window_ms, max_batch=args.max_batch, max_queue=args.max_queue)
        config = ServerConfig([bundle], threads=1, metrics_port=metrics_port, batching=batching)
        levels: list[Level] = []
        with start_server_process(config, cpus=server_cpus) as server:
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            for clients in counts:
                print(f"{clients} clients ...", flush=True)
                layout, latencies, errors, batches, mean, server_cpu_s = run_level(
                    server.process.pid,
                    server.address,
                    metrics_url,
                    payloads,
                    clients,
                    args.processes,
                    args.warmup,
                    args.duration,
                    client_cpus,
                )
                # Right after the load, on the server's CPU (the server idle): the machine is
                # shared and its speed drifts, so the two are measured as close together as they can be.
                batch = max(1, round(mean))
                raw_per_s, raw_per_cpu_s = raw_throughput(bundle, requests, batch, server_cpus)
                levels.append(
                    Level(
                        clients,
                        layout,
                        args.duration,
                        latencies,
                        errors,
                        batches,
                        mean,
                        server_cpu_s,
                        batch,
                        raw_per_s,
                        raw_per_cpu_s,
                    )
                )
    report(levels)


def report(levels: list[Level]) -> None:
    print()
    print(
        f"{'clients':>7} {'procs×thr':>9} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
        f"{'batch':>6} {'raw/s':>7} {'ratio':>6} {'cpu ratio':>9} {'cpu ms/req':>10}"
    )
    for level in levels:
        print(
            f"{level.clients:>7} {level.layout:>9} {level.throughput:>7.1f} {level.percentile_ms(50):>7.2f} "
            f"{level.percentile_ms(95):>7.2f} {level.percentile_ms(99):>7.2f} {sum(level.errors.values()):>6} "
            f"{level.mean_batch:>6.2f} {level.raw_per_s:>7.1f} {level.ratio:>6.3f} {level.cpu_ratio:>9.3f} "
            f"{level.server_cpu_s * 1e3 / max(1, len(level.latencies_ms)):>10.2f}"
            f"  (raw at batch {level.raw_batch})"
        )
    print("ratio: req/s over raw onnxruntime samples/s (tail alone, batch = mean batch, decoded inputs, same CPU);")
    print("cpu ratio: the same per CPU-second of the server process and of the raw run.")
    print()
    for level in levels:
        shown = ", ".join(
            f"≤{'+Inf' if b == float('inf') else int(b)}: {int(c)}" for b, c in sorted(level.batches.items()) if c
        )
        print(f"batches at N={level.clients} (size: batches): {shown or 'none'}")
        if level.errors:
            print(f"errors at N={level.clients}: {dict(level.errors)}")
    target = next((level for level in levels if level.clients == TARGET_CLIENTS), None)
    if target is not None:
        ok = target.ratio >= TARGET_RATIO and not target.errors
        print(
            f"\ntarget at N={TARGET_CLIENTS}: ratio ≥ {TARGET_RATIO} and 0 errors: {'met' if ok else 'MISSED'} "
            f"(ratio {target.ratio:.3f}, cpu ratio {target.cpu_ratio:.3f}, {sum(target.errors.values())} errors)"
        )


if __name__ == "__main__":
    main()
