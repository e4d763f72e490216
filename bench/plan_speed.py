"""Planning speed: how long choosing a cut from a Profile takes, per policy, on a model of hundreds of ops.

The default model is PP-OCRv4's text detector from the rapidocr-onnxruntime wheel (328 ops, 329
prefix cuts, most of them multi-tensor), at a small input (planning time does not depend on it).
Its Profile is made once: every op is timed by onnxruntime's profiler and every activation encoded
(splitter.profile.ops), and each prefix cut's head, tail and codec costs are the sums over its ops
and crossing tensors, as splitter.cost.op_cost prices them. That takes seconds where timing 329 heads
and tails takes minutes, and the planner does the same work on it as on a measured one.
`--profile FILE` plans from a saved Profile instead (`splitinfer profile`).

Then `plan()` is timed for every policy (a cold first call, then the median of `--repeats`), and
`sweep_bandwidth` (hundreds of plans: the switching points a runtime re-plans with). Target: a
plan in < 50 ms.

    .venv/bin/python bench/plan_speed.py [--model ppocr_det] [--input-shape 1,3,320,320] [--network 4g] [--slowdown 30] [--repeats 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

from rich.console import Console
from rich.table import Table

from splitter.cost.cut_cost import profile_power
from splitter.cost.network import PRESETS
from splitter.cost.op_cost import op_costs, prefix_costs
from splitter.cost.plan import DEFAULT_CODEC, plan
from splitter.cost.sweep import sweep_bandwidth
from splitter.graph.cuts import device_ops
from splitter.graph.memory import head_memory
from splitter.profile.measure import profile_cuts
from splitter.profile.ops import profile_ops
from splitter.profile.schema import CodecCost, CutProfile, Profile
from splitter.profile.timing import ProfileSettings
from splitter.sources import ModelSource, load_source

POLICIES = ("neurosurgeon", "mincut", "throughput", "energy")
TARGET_MS = 50.0


def op_summed_profile(source: ModelSource, settings: ProfileSettings) -> Profile:
    """A Profile whose cuts are priced from per-op measurements (see the module's docstring)."""
    feed = source.samples(1)[0][1]
    # The profile's frame (engines, machine, input shapes) without timing a single cut.
    frame = dataclasses.replace(
        profile_cuts(source.model, source.model_id, [], feed, settings), ops=profile_ops(source.model, feed, settings)
    )
    graph = frame.ops.graph()
    errors = {t.name: {c: cost.rel_error for c, cost in t.codecs.items()} for t in frame.ops.tensors}
    priced = {codec: op_costs(frame, PRESETS["4g"], codec, profile_power(frame)) for codec in settings.codecs}
    per_codec = {codec: prefix_costs(costs) for codec, costs in priced.items()}
    cuts = []
    for index, cut in enumerate(next(iter(priced.values())).prefix_cuts):
        cost = per_codec[settings.codecs[0]][index]
        codecs = {
            codec: CodecCost(
                c.nbytes, c.encode_ms, c.decode_ms, max((errors[t][codec] for t in c.tensors), default=0.0)
            )
            for codec, c in ((codec, costs[index]) for codec, costs in per_codec.items())
        }
        memory = head_memory(graph, device_ops(graph, cut), cut.tensors)
        cuts.append(
            CutProfile(
                name=cut.name,
                head_size=cut.head_size,
                tensors=cut.tensors,
                shapes=tuple(graph.tensors[t].shape for t in cut.tensors),
                raw_nbytes=sum(graph.tensors[t].nbytes for t in cut.tensors),
                head_ms=cost.head_ms,
                tail_ms=cost.tail_ms,
                codecs={} if cut.is_edge_only else codecs,
                head_weight_bytes=memory.weight_bytes,
                head_activation_bytes=memory.activation_bytes,
            )
        )
    return dataclasses.replace(frame, cuts=tuple(cuts))


def timed_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(first call, median of `repeats` further calls) in ms."""
    start = time.perf_counter()
    fn()
    first = (time.perf_counter() - start) * 1e3
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return first, statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ppocr_det", help="registered model, packaged model or .onnx path")
    parser.add_argument("--input-shape", default="1,3,320,320", help="comma-separated; '' for the model's own")
    parser.add_argument("--profile", help="plan from this saved Profile instead of profiling --model")
    parser.add_argument("--network", default="4g", choices=sorted(PRESETS))
    parser.add_argument("--codec", default=DEFAULT_CODEC)
    parser.add_argument(
        "--slowdown", type=float, default=30.0, help="device slowdown the plans assume (so that they split)"
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed plans per policy")
    parser.add_argument("--sweep-repeats", type=int, default=1, help="timed sweeps per policy")
    args = parser.parse_args()
    console = Console(width=160)

    if args.profile:
        profile = Profile.load(args.profile)
        how = f"saved profile {args.profile}"
    else:
        shape = tuple(int(d) for d in args.input_shape.split(",")) if args.input_shape else None
        source = load_source(args.model, input_shape=shape)
        started = time.perf_counter()
        profile = op_summed_profile(source, ProfileSettings(repeats=5, codecs=(args.codec,)))
        how = f"per-op profile, cuts priced from op sums, made in {time.perf_counter() - started:.1f} s"
    profile = dataclasses.replace(profile, edge_slowdown=args.slowdown)
    if profile.ops is None:
        raise SystemExit("the profile has no per-op costs: the mincut policy cannot plan with it")
    network = PRESETS[args.network]
    ops = len(profile.ops.ops)
    table = Table(
        title=f"{profile.model_id}: {ops} ops, {len(profile.cuts)} candidate cuts ({how}); {network.label}, {args.codec}, device ×{args.slowdown:g}",
        title_justify="left",
    )
    for header in (
        "policy",
        "chosen cut",
        "plan ms (first)",
        "plan ms (median)",
        f"< {TARGET_MS:g} ms",
        "sweep ms",
        "switches",
    ):
        table.add_column(header, justify="left" if header in ("policy", "chosen cut") else "right")
    worst = 0.0
    for policy in POLICIES:
        run = lambda: plan(profile, network, codec=args.codec, policy=policy)  # noqa: E731
        first, median = timed_ms(run, args.repeats)
        chosen = run().chosen
        sweep = lambda: sweep_bandwidth(profile, network.rtt_ms, codec=args.codec, policy=policy)  # noqa: E731
        _, sweep_ms = timed_ms(sweep, args.sweep_repeats)
        worst = max(worst, median)
        table.add_row(
            policy,
            chosen.name,
            f"{first:.1f}",
            f"{median:.2f}",
            "[green]yes" if median < TARGET_MS else "[red]no",
            f"{sweep_ms:.0f}",
            str(len(sweep()) - 1),
        )
    console.print(table)
    verdict = "PASS" if worst < TARGET_MS else "FAIL"
    console.print(
        f"verdict: {verdict}: slowest policy plans in {worst:.2f} ms (median of {args.repeats}), target < {TARGET_MS:g} ms for a {ops}-op model"
    )


if __name__ == "__main__":
    main()
