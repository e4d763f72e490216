"""Split requests through an emulated link against the physical limit of that link (issue 16 item 4).

For a symmetric link of rate R and round trip RTT (netemu's user-space link, on loopback), the
fastest a split request can be is

    limit = head + request bytes / R + RTT + tail + reply bytes / R

with the head and the tail as this request's own run measured them (the client's head_ms, the
server's tail_ms). The bench sends photos (scikit-image's, through the bundle's preprocessing)
at three depths of the demo's model (EfficientNet-Lite0, int8+zstd), each with the default raw
reply and with the server's top-5, and prints per line the median measured latency, the median
limit and their ratio (limit ÷ measured: 1 is the link's best). Target: ≥ 0.9 on every line.

    .venv/bin/python bench/link_limit.py [--rates 1mbit,5mbit] [--rtt 40ms] [--requests 12]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from overhead import export_bundles, photos  # noqa: E402 (the bench's own helpers)

from protos.units import parse_duration_ms, parse_rate_bps  # noqa: E402

DEFAULT_CUTS = "_blocks.4/Add,_blocks.7/Add,_blocks.10/Add"
TARGET_RATIO = 0.9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--cuts", default=DEFAULT_CUTS)
    parser.add_argument("--rates", default="1mbit,5mbit", help="symmetric link rates")
    parser.add_argument("--rtt", default="40ms")
    parser.add_argument("--requests", type=int, default=12, help="timed requests per line (after 2 warm-up)")
    args = parser.parse_args()

    from cloud_runtime.config import ServerConfig
    from cloud_runtime.process import start_server_process
    from edge_runtime.client import EdgeClient
    from edge_runtime.config import EdgeConfig
    from netemu import LinkEmulator, Shape

    rtt_ms = parse_duration_ms(args.rtt)
    cpus = sorted(os.sched_getaffinity(0))
    edge_cpus, server_cpus = ({cpus[0]}, {cpus[-1]}) if len(cpus) >= 2 else (None, None)
    if edge_cpus:
        os.sched_setaffinity(0, edge_cpus)
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        split, _ = export_bundles(args.model, args.cuts.split(","), Path(tmp), device=False)
        inputs = photos(split[0], 4)
        config = ServerConfig([b.path for b in split], threads=1)
        with start_server_process(config, cpus=server_cpus) as server:
            for rate_text in args.rates.split(","):
                rate = parse_rate_bps(rate_text)
                one_way = Shape(rate_bps=rate, delay_ms=rtt_ms / 2)
                with LinkEmulator(server.address, one_way, one_way) as link:
                    for bundle in split:
                        for result in ("fp32", "top5"):
                            print(f"{rate_text} {bundle.manifest.cut_name} {result} ...", flush=True)
                            measured, limits = [], []
                            with EdgeClient(bundle, link.address, EdgeConfig(result=result)) as client:
                                for index in range(args.requests + 2):
                                    r = client.infer(inputs[index % len(inputs)])
                                    t = r.timing
                                    wire_ms = (r.request_bytes + r.response_bytes) * 8 / rate * 1e3
                                    if index >= 2:
                                        measured.append(t.total_ms)
                                        limits.append(t.head_ms + wire_ms + rtt_ms + t.tail_ms)
                            lines.append(
                                (
                                    rate_text,
                                    bundle.manifest.cut_name,
                                    result,
                                    r.request_bytes,
                                    r.response_bytes,
                                    statistics.median(measured),
                                    statistics.median(limits),
                                )
                            )
    print(
        f"\n{args.model}, int8+zstd, symmetric link, RTT {rtt_ms:g} ms (netemu user-space link); photos; "
        f"medians of {args.requests} requests; limit = head + bytes both ways / rate + RTT + tail"
    )
    print(f"{'rate':<8}{'cut':<18}{'reply':<7}{'req B':>8}{'reply B':>8}{'measured':>10}{'limit':>9}{'ratio':>7}")
    for rate_text, cut, result, sent, back, measured, limit in lines:
        print(
            f"{rate_text:<8}{cut:<18}{result:<7}{sent:>8}{back:>8}{measured:>10.1f}{limit:>9.1f}{limit / measured:>7.3f}"
        )
    worst = min(limit / measured for *_, measured, limit in lines)
    print(
        f"target: ≥ {TARGET_RATIO} × the physical limit on every line: {'met' if worst >= TARGET_RATIO else 'MISSED'}"
    )
    print(f"worst ratio to the physical limit: {worst:.3f}")


if __name__ == "__main__":
    main()
