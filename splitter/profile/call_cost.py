"""What one gRPC call costs beyond its network: the fixed part of every split request's latency.

A split request is a unary gRPC call. Beside its bytes on the wire and its round trip, the call
itself costs both ends CPU time: HTTP/2 framing, the message copies, gRPC's threads handing the
call over. On this machine a raw Python unary call of 7 KB takes ~0.4 ms on loopback, and
splitinfer's own serving stack adds a little more (bench/overhead.py compares the two). The plan
charges it once per split request; a preset's RTT is the network's alone.

Measured with a raw gRPC echo on loopback inside this process (client and server threads), of a
small message, so that what is left is the per-call cost and not the bytes' (which the network
model prices). The runtimes' own stack is not used: the splitter does not depend on them
(import-linter's layers), and the figure is what gRPC itself allows, the floor the serving path is
measured against.
"""

from __future__ import annotations

import statistics
import time
from concurrent import futures

import grpc

# A request's fields beside its tensors (ids, names, shapes): the bytes the fixed cost is timed with.
PAYLOAD_BYTES = 256
CALLS = 200
WARMUP_CALLS = 20
_METHOD = "/splitinfer.profile.Echo/Echo"


def measure_call_ms(calls: int = CALLS, payload_bytes: int = PAYLOAD_BYTES) -> float:
    """The median time of a unary echo of `payload_bytes` over loopback, in milliseconds."""
    reply = bytes(payload_bytes)
    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: reply)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("splitinfer.profile.Echo", {"Echo": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary(_METHOD)
            request = bytes(payload_bytes)
            for _ in range(WARMUP_CALLS):
                echo(request, timeout=10)
            times = []
            for _ in range(calls):
                start = time.perf_counter()
                echo(request, timeout=10)
                times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    finally:
        server.stop(None)
