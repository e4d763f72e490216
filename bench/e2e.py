"""End-to-end latency of every cut on loopback, measured beside the planner's prediction.

Profiles the default model, exports a bundle for every cut candidate, serves all the tails from one
`splitinfer serve` process, and times requests from the edge client for each cut. As in a
deployment, device and server do not share a CPU: this process is pinned to the first CPU, the
server to the others (`--no-pin` to share them all). The prediction uses the profile measured in the same run and a
NetworkModel of loopback measured here (RTT of an empty call, bandwidth of a 4 MB request).
Framework overhead = encode + network (gRPC wall time less the server's own time) + decode.

    .venv/bin/python bench/e2e.py [--model mobilenet_v2] [--codec int8+zstd] [--requests 20] [--every 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.table import Table

from cloud_runtime.config import ServerConfig
from cloud_runtime.process import split_cpus, start_server_process
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.splitinfer.v1 import inference_pb2 as pb
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc
from splitter.cost.cut_cost import cut_cost
from splitter.cost.network import PRESETS, NetworkModel
from splitter.cost.plan import plan
from splitter.export.bundle import export_bundle
from splitter.pipeline import model_cuts, profile_source
from splitter.profile.timing import ProfileSettings
from splitter.sources import load_source


def measure_loopback(address: str, repeats: int = 50) -> NetworkModel:
    """RTT of a call refused at once (an unknown model); bandwidth from the extra time the same
    refusal takes when the request carries 4 MB."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.SplitInferenceStub(channel)
        probe = pb.InferRequest(model_id="__bandwidth_probe__", tensors=[pb.Tensor(name="x", data=os.urandom(4 << 20))])

        def timed(call) -> float:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                try:
                    call()
                except grpc.RpcError:
                    pass  # NOT_FOUND, after the server has received the whole probe
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)

        empty = pb.InferRequest(model_id="__bandwidth_probe__")
        rtt_ms = timed(lambda: stub.Infer(empty))
        big_ms = timed(lambda: stub.Infer(probe))
    return NetworkModel(probe.ByteSize() * 8 / ((big_ms - rtt_ms) / 1e3), rtt_ms, "loopback")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mobilenet_v2")
    parser.add_argument("--codec", default="int8+zstd")
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--every", type=int, default=1, help="bench every k-th cut")
    parser.add_argument("--repeats", type=int, default=10, help="profile repeats")
    parser.add_argument("--no-pin", action="store_true", help="let device and server share every CPU")
    parser.add_argument("--scenario-slowdown", type=float, default=30.0, help="device slowdown of the demo scenario")
    args = parser.parse_args()
    console = Console(width=170)

    edge_cpus, server_cpus = (set(os.sched_getaffinity(0)),) * 2 if args.no_pin else split_cpus()
    source = load_source(args.model)
    # Profiled as they will run: the device with one thread, the server with its CPUs.
    settings = ProfileSettings(edge_threads=1, server_threads=len(server_cpus), repeats=args.repeats)
    profile = profile_source(source, settings, progress=True)
    # The cut `make demo` deploys (4G, a device 30× slower) is always measured: the overhead bar is about it.
    scenario = dataclasses.replace(profile, edge_slowdown=args.scenario_slowdown)
    default_cut = plan(scenario, PRESETS["4g"], codec=args.codec).chosen.name
    all_cuts = [c for c in model_cuts(source, include_input=True) if not c.is_edge_only]
    cuts = [c for i, c in enumerate(all_cuts) if i % args.every == 0 or c.name == default_cut]
    sample = source.samples(1)

    with tempfile.TemporaryDirectory() as tmp:
        bundles = []
        for cut in cuts:
            bundle, _ = export_bundle(
                source, cut, Path(tmp) / f"cut{cut.head_size:04d}", sample, codec=args.codec, min_agreement=0.0
            )
            bundles.append(bundle)
        server = start_server_process(ServerConfig(bundles, threads=settings.server_threads), cpus=server_cpus)
        os.sched_setaffinity(0, edge_cpus)
        try:
            address = server.address
            network = measure_loopback(address)
            rows = []
            for cut, bundle in zip(cuts, bundles):
                with EdgeClient(bundle, address, EdgeConfig(threads=settings.edge_threads)) as client:
                    feed = sample[0][1]
                    for _ in range(3):
                        client.infer(feed)
                    results = [client.infer(feed) for _ in range(args.requests)]
                rows.append((cut, cut_cost(profile, profile.cut(cut.name), network, args.codec), results))
        finally:
            server.stop()

    pinning = (
        "shared CPUs" if args.no_pin else f"device on CPU {sorted(edge_cpus)}, server on CPUs {sorted(server_cpus)}"
    )
    table = Table(
        title=f"{args.model}, {args.codec}, {pinning}, loopback {network.bandwidth_bps / 1e9:.2f} Gbit/s, RTT {network.rtt_ms:.3f} ms; medians of {args.requests} requests",
        title_justify="left",
    )
    for header in (
        "cut",
        "n",
        "KB",
        "pred ms",
        "meas ms",
        "meas/pred",
        "head",
        "encode",
        "network",
        "decode",
        "tail",
        "overhead ms",
        "overhead %",
    ):
        table.add_column(header, justify="left" if header == "cut" else "right")
    shares, default_line = [], ""
    for cut, predicted, results in rows:
        med = lambda f: statistics.median(getattr(r.timing, f) for r in results)  # noqa: E731
        overhead = med("encode_ms") + med("network_ms") + med("decode_ms") + med("output_decode_ms")
        total = med("total_ms")
        shares.append(overhead / total)
        if cut.name == default_cut:
            default_line = (
                f"default cut {cut.name} (planned for 4G with a ×{args.scenario_slowdown:g} device): framework overhead "
                f"{overhead:.2f} ms = encode {med('encode_ms'):.2f} + network {med('network_ms'):.2f} + decode "
                f"{med('decode_ms'):.2f} + output decode {med('output_decode_ms'):.2f}; bare gRPC round trip {network.rtt_ms:.2f} ms"
            )
        table.add_row(
            cut.name + (" *" if cut.name == default_cut else ""),
            str(len(cut.tensors)),
            f"{results[0].bytes_sent / 1e3:.1f}",
            f"{predicted.total_ms:.2f}",
            f"{total:.2f}",
            f"{total / predicted.total_ms:.2f}",
            f"{med('head_ms'):.2f}",
            f"{med('encode_ms'):.2f}",
            f"{med('network_ms'):.2f}",
            f"{med('decode_ms'):.2f}",
            f"{med('tail_ms'):.2f}",
            f"{overhead:.2f}",
            f"{overhead / total:.0%}",
        )
    console.print(table)
    console.print(
        f"framework overhead share: median {statistics.median(shares):.0%}, max {max(shares):.0%} over {len(rows)} cuts"
    )
    console.print(default_line)


if __name__ == "__main__":
    main()
