"""What splitinfer adds to one request, beside the floor that gRPC and the codec allow, in one run.

On loopback, the edge (this process) on one CPU and the servers on another, one onnxruntime thread
each, the same processes and pinning for every line:

- **floor**: a raw gRPC Python unary echo of the same serialized request (identity serializers, a
  reply of the size splitinfer's reply has), plus this codec's encode of the cut tensors and their
  decode, each timed here;
- **unary / stream**: `EdgeClient.infer` and `infer_stream` (one request in flight) against
  `splitinfer serve` (default settings: batching on), per cut; overhead = end to end − head − the
  server's tail run;
- **on device**: an all-on-device bundle through `EdgeClient.infer` against raw onnxruntime
  running the same model file; what the client adds is `infer`'s time less onnxruntime's run
  inside it, the same call's (two runs of a 15 ms model differ by more than the 0.1 ms target).

Requests are photos (scikit-image's) through the bundle's preprocessing; the three kinds of call
are interleaved round by round, so a drift of the shared machine's speed touches them alike.
Figures are medians over `--requests` per line. The default model is the demo's (EfficientNet-Lite0,
trained), cut at four depths (`--cuts`), int8+zstd. Targets (issue 16): overhead ≤ 1.3 × the floor;
the on-device path ≤ 0.1 ms above raw onnxruntime.

    .venv/bin/python bench/overhead.py [--model efficientnet_lite0] [--cuts a,b,c,d] [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort

from protos.bundle import Bundle
from protos.codec import Codec, decode, encode
from protos.splitinfer.v1 import inference_pb2 as pb

DEFAULT_CUTS = "_blocks.2/Add,_blocks.4/Add,_blocks.7/Add,_blocks.10/Add"
ECHO_METHOD = "/bench.Echo/Echo"
TARGET_RATIO = 1.3
TARGET_DEVICE_MS = 0.1
# The bundles only have to be served: the accuracy budget of export is no concern here.
SERVING_ONLY_BUDGET = 0.5


def echo_server(port_file: str, reply_bytes: int) -> None:
    """A raw gRPC server whose one method answers every request with `reply_bytes` bytes."""
    from concurrent import futures

    reply = bytes(reply_bytes)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: reply)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    Path(port_file).write_text(str(port))
    server.wait_for_termination()


def aio_echo_server(port_file: str, reply_bytes: int) -> None:
    """The same echo on grpc.aio: is the asyncio stack nearer the floor than the threaded one?"""
    import asyncio

    async def serve() -> None:
        reply = bytes(reply_bytes)

        async def echo(request, context):
            return reply

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(echo)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("bench.Echo", {"Echo": handler}),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        await server.wait_for_termination()

    asyncio.run(serve())


def compare_aio(sync_address: str, cpus: set[int] | None, reply_bytes: int, payload: bytes, tmp: Path, calls: int):
    """Medians (ms) of one echo call: sync client → sync server, sync → aio server, aio → sync."""
    import asyncio

    aio_process, aio_address = start_echo(cpus, reply_bytes, tmp / "aio", server="aio_echo_server")
    try:
        sync_call = grpc.insecure_channel(sync_address).unary_unary(ECHO_METHOD)
        aio_server_call = grpc.insecure_channel(aio_address).unary_unary(ECHO_METHOD)
        sync_ms, aio_server_ms = [], []
        for _ in range(calls + 20):
            sync_ms.append(timed_ms(lambda: sync_call(payload, timeout=10)))
            aio_server_ms.append(timed_ms(lambda: aio_server_call(payload, timeout=10)))

        async def aio_client() -> list[float]:
            async with grpc.aio.insecure_channel(sync_address) as channel:
                call = channel.unary_unary(ECHO_METHOD)
                samples = []
                for _ in range(calls + 20):
                    start = time.perf_counter()
                    await call(payload, timeout=10)
                    samples.append((time.perf_counter() - start) * 1e3)
                return samples

        aio_client_ms = asyncio.run(aio_client())
    finally:
        aio_process.kill()
        aio_process.wait()
    return tuple(median_ms(samples[20:]) for samples in (sync_ms, aio_server_ms, aio_client_ms))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples)


def timed_ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


class StreamOneAtATime:
    """`infer_stream` with one request in flight: the next input is given once a result is back,
    so each result times one request and not the queue of a pipelined stream."""

    def __init__(self, client) -> None:
        self._inputs: queue.Queue = queue.Queue()
        self._results = client.infer_stream(self._feed())

    def _feed(self) -> Iterator[np.ndarray]:
        while (item := self._inputs.get()) is not None:
            yield item

    def infer(self, x: np.ndarray):
        self._inputs.put(x)
        return next(self._results)

    def close(self) -> None:
        self._inputs.put(None)
        for _ in self._results:
            pass


def export_bundles(
    model: str, cuts: list[str], out: Path, *, device: bool = True
) -> tuple[list[Bundle], Bundle | None]:
    from splitter.pipeline import export_model

    split = []
    for index, cut in enumerate(cuts):
        print(f"exporting {model} at {cut} (int8+zstd) ...", flush=True)
        bundle, _ = export_model(model, out / f"cut{index}", cut=cut, codec="int8+zstd", max_error=SERVING_ONLY_BUDGET)
        split.append(bundle)
    if not device:
        return split, None
    print(f"exporting {model} all on the device ...", flush=True)
    edge_only, _ = export_model(model, out / "device", cut="output", codec="fp32")
    return split, edge_only


def photos(bundle: Bundle, count: int) -> list[np.ndarray]:
    from splitter.models.photos import evaluation_photos

    images = [photo.image for photo in evaluation_photos()]
    return [bundle.manifest.preprocess(images[i % len(images)]) for i in range(count)]


def start_echo(
    cpus: set[int] | None, reply_bytes: int, tmp: Path, server: str = "echo_server"
) -> tuple[subprocess.Popen, str]:
    tmp.mkdir(parents=True, exist_ok=True)
    port_file = tmp / "echo.port"
    here = str(Path(__file__).parent)
    code = f"import sys; sys.path.insert(0, {here!r}); import overhead; overhead.{server}({str(port_file)!r}, {reply_bytes})"
    process = subprocess.Popen([sys.executable, "-c", code])
    if cpus:
        os.sched_setaffinity(process.pid, cpus)
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the echo server did not start")
        time.sleep(0.05)
    return process, f"127.0.0.1:{port_file.read_text()}"


def measure_cut(bundle: Bundle, address: str, echo, inputs: list[np.ndarray], requests: int) -> dict[str, float]:
    """Medians for one cut: the floor's parts, and splitinfer's overhead unary and on a stream."""
    from edge_runtime.client import EdgeClient

    codec = Codec.parse(bundle.manifest.codec)
    floor: dict[str, list[float]] = {"echo": [], "encode": [], "decode": []}
    overhead: dict[str, list[float]] = {"unary": [], "stream": []}
    with EdgeClient(bundle, address) as client:
        stream = StreamOneAtATime(client)
        names = [spec.name for spec in bundle.manifest.cut]
        for round_index in range(requests + 10):
            x = inputs[round_index % len(inputs)]
            cut = client.head.run({bundle.manifest.inputs[0].name: x})
            tensors: list = []
            encode_ms = timed_ms(lambda: tensors.extend(encode(n, cut[n], codec) for n in names))
            # The message EdgeClient sends, to echo.
            manifest = bundle.manifest
            request = pb.InferRequest(
                request_id=uuid.uuid4().hex,
                model_id=manifest.model_id,
                bundle_hash=manifest.bundle_hash,
                tensors=tensors,
            )
            payload = request.SerializeToString()
            decode_ms = timed_ms(lambda: [decode(t) for t in tensors])
            echo_ms = timed_ms(lambda: echo(payload, timeout=10))
            results = [client.infer(x), stream.infer(x)]
            if round_index < 10:  # warm-up: connections, sessions, zstd contexts
                continue
            for key, value in (("echo", echo_ms), ("encode", encode_ms), ("decode", decode_ms)):
                floor[key].append(value)
            for key, result in zip(("unary", "stream"), results):
                t = result.timing
                overhead[key].append(t.total_ms - t.head_ms - t.tail_ms)
        stream.close()
    figures = {key: median_ms(values) for key, values in floor.items()}
    figures["floor"] = figures["echo"] + figures["encode"] + figures["decode"]
    figures.update({key: median_ms(values) for key, values in overhead.items()})
    figures["request_bytes"] = len(payload)
    return figures


class TimedSession:
    """An InferenceSession that keeps how long each run took, so what the client adds around it is
    measured by difference within the same call, not across two noisy runs of a 15 ms model."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.last_ms = 0.0

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self.last_ms = (time.perf_counter() - start) * 1e3


def measure_device(bundle: Bundle, inputs: list[np.ndarray], requests: int) -> tuple[float, float, float]:
    """Medians (ms) of the all-on-device path through EdgeClient, of what it adds to onnxruntime's
    own run of the model inside it, and of raw onnxruntime on the same model file (interleaved)."""
    from edge_runtime.client import EdgeClient
    from edge_runtime.head import session_for

    raw = session_for(bundle.head_path, 1)  # as EdgeClient makes its head's session
    name = bundle.manifest.inputs[0].name
    client_ms, added_ms, raw_ms = [], [], []
    with EdgeClient(bundle, None) as client:
        timed = TimedSession(client.head.session)
        client.head.session = timed
        for index in range(requests + 10):
            x = inputs[index % len(inputs)]
            edge = timed_ms(lambda: client.infer(x))
            inside = timed.last_ms
            ref = timed_ms(lambda: raw.run(None, {name: x}))
            if index >= 10:
                client_ms.append(edge)
                added_ms.append(edge - inside)
                raw_ms.append(ref)
    return median_ms(client_ms), median_ms(added_ms), median_ms(raw_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--cuts", default=DEFAULT_CUTS, help="comma-separated cut names (the first is reported first)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per line")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    edge_cpus, server_cpus = ({cpus[0]}, {cpus[-1]}) if len(cpus) >= 2 else (None, None)
    if edge_cpus:
        os.sched_setaffinity(0, edge_cpus)
    print(f"CPUs: edge (this process) {sorted(edge_cpus or cpus)}, servers {sorted(server_cpus or cpus)}")

    from cloud_runtime.config import ServerConfig
    from cloud_runtime.process import start_server_process

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        split, device = export_bundles(args.model, args.cuts.split(","), tmp)
        inputs = photos(split[0], 6)
        reply_bytes = 4 * 1000 + 64  # ~ splitinfer's reply: 1000 fp32 logits and its timing
        echo_process, echo_address = start_echo(server_cpus, reply_bytes, tmp)
        rows = []
        try:
            channel = grpc.insecure_channel(echo_address)
            echo = channel.unary_unary(ECHO_METHOD)
            config = ServerConfig([b.path for b in split], threads=1)
            with start_server_process(config, cpus=server_cpus) as server:
                for bundle in split:
                    print(f"measuring {bundle.manifest.cut_name} ...", flush=True)
                    rows.append((bundle, measure_cut(bundle, server.address, echo, inputs, args.requests)))
            channel.close()
            print("measuring grpc.aio ...", flush=True)
            payload = bytes(int(rows[0][1]["request_bytes"]))
            aio = compare_aio(echo_address, server_cpus, reply_bytes, payload, tmp, args.requests)
        finally:
            echo_process.kill()
            echo_process.wait()
        client_ms, added_ms, raw_ms = measure_device(device, inputs, args.requests)

    print(
        f"\n{args.model}, int8+zstd, {args.requests} requests per line (photos, medians, ms); "
        "overhead = end to end − head − server tail"
    )
    header = (
        f"{'cut':<34}{'bytes':>8}{'echo':>8}{'enc':>7}{'dec':>7}{'floor':>8}{'unary':>8}{'×':>6}{'stream':>8}{'×':>6}"
    )
    print(header)
    for bundle, f in rows:
        print(
            f"{bundle.manifest.cut_name:<34}{f['request_bytes']:>8.0f}{f['echo']:>8.3f}{f['encode']:>7.3f}"
            f"{f['decode']:>7.3f}{f['floor']:>8.3f}{f['unary']:>8.3f}{f['unary'] / f['floor']:>6.2f}"
            f"{f['stream']:>8.3f}{f['stream'] / f['floor']:>6.2f}"
        )
    print(
        f"on device: EdgeClient {client_ms:.3f} ms, raw onnxruntime {raw_ms:.3f} ms (separate runs); "
        f"EdgeClient adds {added_ms:.3f} ms around onnxruntime's run (target ≤ {TARGET_DEVICE_MS} ms): "
        f"{'met' if added_ms <= TARGET_DEVICE_MS else 'MISSED'}"
    )
    print(
        f"grpc.aio, the same echo ({len(payload)} bytes): sync → sync {aio[0]:.3f} ms, sync → aio server "
        f"{aio[1]:.3f} ms, aio client → sync {aio[2]:.3f} ms (splitinfer serves and calls with the faster)"
    )
    worst = max(f["unary"] / f["floor"] for _, f in rows)
    print(
        f"target: unary overhead ≤ {TARGET_RATIO} × floor at every cut: {'met' if worst <= TARGET_RATIO else 'MISSED'}"
    )
    print(f"overhead ratio to floor: {worst:.2f}")


if __name__ == "__main__":
    main()
