"""The min-cut partitioner: on a hand-built ONNX DAG with parallel branches and hand-set costs, it
finds a cut no prefix gives, strictly better than every prefix, and that cut really separates the
model (exported halves compose to the model); on a chain it agrees with the best single-tensor
cut; on measured profiles (a chain ONNX file, resnet_tiny) it is never worse than the best prefix
cut; constraints bind it; the per-op profile is what it should be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from handmade import op_level_profile
from onnx import TensorProto, helper, numpy_helper

from protos.errors import SplitInferError
from protos.power import PowerModel
from splitter.cost.network import NetworkModel
from splitter.cost.op_cost import device_set_cost, op_costs, prefix_costs
from splitter.cost.plan import cost_table, plan
from splitter.export.bundle import export_bundle, split_model
from splitter.graph.cuts import Cut, cut_from_device_ops, device_ops, enumerate_cuts
from splitter.graph.graph import graph_from_onnx
from splitter.pipeline import profile_source
from splitter.policies import Constraints
from splitter.policies.mincut_solver import min_cut
from splitter.profile.schema import Profile
from splitter.profile.timing import ProfileSettings
from splitter.sources import ModelSource, load_source

NET = NetworkModel(8e6, 10.0)  # 1000 bytes per ms, as op_level_profile prices tensors
FAST_SETTINGS = ProfileSettings(
    edge_threads=1,
    server_threads=1,
    repeats=3,
    warmup=1,
    idle_gap_ms=0.5,
    codecs=("fp32", "int8+zstd"),
    edge_slowdown=8.0,
)


def _conv(name: str, x: str, w: str, out: str, k: int) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [out], name=name, pads=[k // 2] * 4)


def branchy_model() -> onnx.ModelProto:
    """x ─ stem ─ r ┬─ b (1×1 conv) ───────────── b1 ┐
                    └─ a (3×3 conv) ─ a_relu ──── a2 ┴─ join ─ mix ─ pool ─ y
    with branch b listed before branch a, so {stem, a, a_relu} is no prefix of the op order."""
    rng = np.random.default_rng(3)
    weights = {"ws": (8, 3, 3, 3), "wb": (8, 8, 1, 1), "wa": (8, 8, 3, 3), "wm": (4, 8, 3, 3)}
    nodes = [
        _conv("stem", "x", "ws", "r", 3),
        _conv("b", "r", "wb", "b1", 1),
        _conv("a", "r", "wa", "a1", 3),
        helper.make_node("Relu", ["a1"], ["a2"], name="a_relu"),
        helper.make_node("Add", ["a2", "b1"], ["s"], name="join"),
        _conv("mix", "s", "wm", "m", 3),
        helper.make_node("GlobalAveragePool", ["m"], ["y"], name="pool"),
    ]
    graph = helper.make_graph(
        nodes,
        "branchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        initializer=[
            numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), n) for n, s in weights.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


# Branch a is cheap on the device and dear on the server, branch b the reverse; r is cheap to send,
# a2 cheaper still, everything else dear. Best: {stem, a, a_relu} on the device, r and a2 cross.
TIMES = {"stem": (1, 1), "b": (50, 1), "a": (2, 50), "a_relu": (1, 1), "join": (1, 1), "mix": (1, 1), "pool": (1, 1)}
LINKS = {"x": 100, "r": 10, "b1": 100, "a1": 100, "a2": 1, "s": 100, "m": 100, "y": 1}


@pytest.fixture(scope="module")
def branchy() -> onnx.ModelProto:
    return branchy_model()


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def assert_separates(model: onnx.ModelProto, cut: Cut) -> None:
    """The cut's tensors split the model: head and tail extracted from them compose to the model,
    and the head holds exactly the cut's device ops."""
    graph = graph_from_onnx(model)
    head, tail = split_model(model, cut)
    x = {n: np.random.default_rng(0).standard_normal(graph.tensors[n].shape).astype(np.float32) for n in graph.inputs}
    expected = _run(model, x)
    sent = _run(head, x) if head is not None else x
    assert sorted(sent) == sorted(cut.tensors)
    if head is not None:
        assert {n.name for n in head.graph.node if n.name in {op.name for op in graph.ops}} == {
            op.name for op in device_ops(graph, cut)
        }
    got = _run(tail, sent) if tail is not None else sent
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5)


def test_a_cut_across_parallel_branches_beats_every_prefix(branchy: onnx.ModelProto, tmp_path: Path) -> None:
    graph = graph_from_onnx(branchy)
    assert [op.name for op in graph.ops] == list(TIMES)
    profile = op_level_profile(graph, TIMES, LINKS)
    chosen = plan(profile, NET, policy="mincut").chosen
    assert set(chosen.head_ops) == {"stem", "a", "a_relu"} and chosen.tensors == ("r", "a2")
    assert chosen.name == "stem+a_relu"  # named after the producers of what crosses
    # 4 ms on the device, 11 ms of sending, 10 ms round trip, 4 ms on the server.
    assert chosen.total_ms == pytest.approx(29.0)
    best_prefix = plan(profile, NET, policy="neurosurgeon").chosen
    assert best_prefix.total_ms > chosen.total_ms + 20
    # The Cut exports: head and tail extracted from its tensors compose to the model.
    cut = cut_from_device_ops(graph, set(chosen.head_ops))
    assert not cut.is_prefix and cut.head_size == 3
    assert_separates(branchy, cut)
    source = ModelSource("branchy", branchy, None)
    bundle, check = export_bundle(source, cut, tmp_path / "bundle", source.samples(2), codec="fp32")
    assert bundle.manifest.cut_name == cut.name and [t.name for t in bundle.manifest.cut] == ["r", "a2"]
    assert check.max_abs_diff_fp32 < 1e-5  # fusion differs between the halves and the whole


def _closed_set_totals(graph, costs) -> dict[frozenset[str], float]:
    """Brute force: every set of ops that can run on the device and sends no input, priced at op level."""
    names = [op.name for op in graph.ops]
    totals = {}
    for mask in range(1 << len(names)):
        device = {n for i, n in enumerate(names) if mask >> i & 1}
        try:
            cost = device_set_cost(costs, device)
        except SplitInferError:
            continue  # not closed: a device op would read a server tensor
        if not cost.sends_input and not cost.is_edge_only:
            totals[frozenset(device)] = cost.total_ms
    return totals


def test_the_min_cut_is_exact_against_every_closed_set(branchy: onnx.ModelProto) -> None:
    graph = graph_from_onnx(branchy)
    costs = op_costs(op_level_profile(graph, TIMES, LINKS), NET, "int8+zstd", PowerModel())
    totals = _closed_set_totals(graph, costs)
    partition = min_cut(costs, input_may_cross=False)
    assert totals[partition.device] == pytest.approx(min(totals.values()))
    assert partition.cut_ms + costs.split_constant_ms() == pytest.approx(min(totals.values()))
    assert len(totals) == 8  # the down-sets of the DAG but the empty and the full one


def test_the_min_cut_is_exact_when_capacities_overflow_int32_nanoseconds(branchy: onnx.ModelProto) -> None:
    """scipy's max-flow counts in int32, so costs summing to more than 2^31 ns (here
    minutes: a slow link) are counted in a coarser unit; the cut must still be the best one and its
    value exact."""
    graph = graph_from_onnx(branchy)
    scale = 1e4  # ms → tens of seconds per op and tensor
    times = {name: (edge * scale, server * scale) for name, (edge, server) in TIMES.items()}
    costs = op_costs(
        op_level_profile(graph, times, {n: ms * scale for n, ms in LINKS.items()}), NET, "int8+zstd", PowerModel()
    )
    totals = _closed_set_totals(graph, costs)
    partition = min_cut(costs, input_may_cross=False)
    assert totals[partition.device] == min(totals.values())
    assert partition.cut_ms + costs.split_constant_ms() == pytest.approx(min(totals.values()), abs=1e-6)


def test_constraints_bind_the_min_cut(branchy: onnx.ModelProto) -> None:
    graph = graph_from_onnx(branchy)
    profile = op_level_profile(graph, TIMES, LINKS)
    # min_head_ops keeps the first ops of the graph's order on the device: here stem and b.
    pinned = plan(profile, NET, policy="mincut", constraints=Constraints(min_head_ops=2)).chosen
    assert {"stem", "b"} <= set(pinned.head_ops or [op.name for op in graph.ops[: pinned.head_size]])
    # With a cheap input and a fast server, sending the raw input would be best (0.5 + 10 + 7 ms):
    # only when the raw input may leave.
    cheap_input = op_level_profile(graph, {**TIMES, "a": (2, 1)}, {**LINKS, "x": 0.5})
    assert plan(cheap_input, NET, policy="mincut").chosen.tensors == ("r",)
    everything = plan(cheap_input, NET, policy="mincut", constraints=Constraints(allow_raw_input=True)).chosen
    assert everything.name == "input" and everything.total_ms == pytest.approx(17.5)
    with pytest.raises(SplitInferError, match="over the 20 ms deadline"):
        plan(profile, NET, policy="mincut", constraints=Constraints(deadline_ms=20))
    # With a slow enough uplink everything stays on the device, unless a split is required.
    slow = NetworkModel(8e4, 10.0)
    assert plan(profile, slow, policy="mincut").chosen.name == "output"
    forced = plan(profile, slow, policy="mincut", constraints=Constraints(allow_edge_only=False)).chosen
    assert not forced.is_edge_only and "pool" not in forced.head_ops
    with pytest.raises(SplitInferError, match="no cut satisfies the constraints"):
        plan(profile, NET, policy="mincut", constraints=Constraints(min_head_ops=7, allow_edge_only=False))


def test_a_memory_limit_moves_weights_to_the_server(branchy: onnx.ModelProto) -> None:
    graph = graph_from_onnx(branchy)
    profile = op_level_profile(graph, TIMES, LINKS)
    free = plan(profile, NET, policy="mincut").chosen
    # wa (8·8·3·3 floats = 2304 B) is the best cut's biggest weight; allow less than it needs.
    limit = free.head_memory_bytes - 1
    limited = plan(profile, NET, policy="mincut", constraints=Constraints(max_head_memory_bytes=limit)).chosen
    assert limited.head_memory_bytes <= limit and limited.total_ms > free.total_ms
    best_fitting_prefix = min(
        (c for c in prefix_costs(cost_table(profile, NET).ops) if c.head_memory_bytes <= limit),
        key=lambda c: c.total_ms,
    )
    assert limited.total_ms <= best_fitting_prefix.total_ms + 1e-9


def test_a_profile_without_per_op_costs_is_named() -> None:
    from handmade import cut, profile

    bare = profile([cut("a", 1, 1.0, 2.0, 100), cut("output", 2, 3.0, 0.0, 0)])
    with pytest.raises(SplitInferError, match="policy 'mincut' needs per-op costs and this profile has none"):
        plan(bare, NET, policy="mincut")


# ----------------------------------------------------------------------- measured profiles


def chain_model() -> onnx.ModelProto:
    """Conv ─ Relu ─ Conv ─ Relu ... ─ GlobalAveragePool: every cut is one tensor."""
    rng = np.random.default_rng(5)
    nodes, inits, x = [], [], "x"
    channels = [3, 16, 32, 32, 8, 4]
    for i, (cin, cout) in enumerate(zip(channels, channels[1:])):
        stride = 2 if i in (1, 3) else 1
        inits.append(
            numpy_helper.from_array((rng.standard_normal((cout, cin, 3, 3)) * 0.2).astype(np.float32), f"w{i}")
        )
        nodes.append(
            helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1] * 4, strides=[stride] * 2)
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["y"], name="pool"))
    graph = helper.make_graph(
        nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture(scope="module")
def chain_profile(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelSource, Profile]:
    path = tmp_path_factory.mktemp("chain") / "chain.onnx"
    onnx.save(chain_model(), str(path))
    source = load_source(str(path))
    return source, profile_source(source, FAST_SETTINGS)


@pytest.fixture(scope="module")
def resnet_profile() -> tuple[ModelSource, Profile]:
    source = load_source("resnet_tiny", input_shape=(1, 3, 96, 96))
    return source, profile_source(source, FAST_SETTINGS)


NETWORKS = [
    NetworkModel(0.13e6, 100.0),
    NetworkModel(1.1e6, 80.0),
    NetworkModel(5.85e6, 40.0),
    NetworkModel(18.88e6, 10.0),
    NetworkModel(1e9, 1.0),
]


def test_on_a_chain_the_min_cut_is_the_best_single_tensor_cut(chain_profile: tuple[ModelSource, Profile]) -> None:
    source, profile = chain_profile
    graph = graph_from_onnx(source.model)
    assert all(len(c.tensors) == 1 for c in enumerate_cuts(graph))
    for network in NETWORKS:
        for constraints in (Constraints(), Constraints(allow_edge_only=False)):
            table = cost_table(profile, network)
            best = min(
                (c for c in prefix_costs(table.ops) if constraints.allows(c)), key=lambda c: (c.total_ms, c.head_size)
            )
            partition = min_cut(
                table.ops, input_may_cross=False, server_pinned=[] if constraints.allow_edge_only else ["pool"]
            )
            found = device_set_cost(table.ops, partition.device)
            if not constraints.allow_edge_only or not best.is_edge_only:
                assert found.total_ms == pytest.approx(best.total_ms, abs=1e-5), (network, constraints)
                assert found.tensors == best.tensors or found.total_ms == pytest.approx(best.total_ms, abs=1e-5)
            chosen = plan(profile, network, policy="mincut", constraints=constraints).chosen
            assert not chosen.head_ops, "every cut of a chain is a prefix"


def test_on_a_residual_net_the_min_cut_is_no_worse_than_any_prefix(resnet_profile: tuple[ModelSource, Profile]) -> None:
    source, profile = resnet_profile
    assert profile.ops is not None and len(profile.ops.ops) == len(graph_from_onnx(source.model).ops)
    seen: set[tuple[str, ...]] = set()
    for network in NETWORKS:
        for constraints in (Constraints(), Constraints(allow_edge_only=False)):
            table = cost_table(profile, network)
            best_prefix = min(c.total_ms for c in prefix_costs(table.ops) if constraints.allows(c))
            chosen = table.ops and plan(profile, network, policy="mincut", constraints=constraints).chosen
            own = device_set_cost(
                table.ops,
                set(chosen.head_ops)
                if chosen.head_ops
                else {op.name for op in table.ops.graph.ops[: chosen.head_size]},
            )
            assert own.total_ms <= best_prefix + 1e-6, (network, constraints)
            if chosen.tensors not in seen and not chosen.is_edge_only:
                seen.add(chosen.tensors)
                cut = cut_from_device_ops(
                    graph_from_onnx(source.model),
                    set(own.head_ops) if own.head_ops else {op.name for op in table.ops.graph.ops[: own.head_size]},
                )
                assert_separates(source.model, cut)
    assert seen


def test_the_per_op_profile(resnet_profile: tuple[ModelSource, Profile], tmp_path: Path) -> None:
    source, profile = resnet_profile
    graph = graph_from_onnx(source.model)
    ops = profile.ops
    assert [o.name for o in ops.ops] == [op.name for op in graph.ops]
    assert all(o.edge_ms >= 0 and o.server_ms >= 0 for o in ops.ops)
    by_type: dict[str, float] = {}
    for o in ops.ops:
        by_type[o.op_type] = by_type.get(o.op_type, 0.0) + o.edge_ms
    # Convolutions dominate; a Relu fused into its Conv costs nothing of its own.
    assert by_type["Conv"] > 0.6 * sum(by_type.values())
    assert 0 < ops.edge_overhead_ms < 1 and 0 < ops.server_overhead_ms < 1
    # Every activation, through every profiled codec.
    assert {t.name for t in ops.tensors} >= {n for op in graph.ops for n in op.outputs}
    assert all(set(t.codecs) == set(FAST_SETTINGS.codecs) for t in ops.tensors)
    x = next(t for t in ops.tensors if t.name == "input")
    assert x.codecs["fp32"].nbytes >= 3 * 96 * 96 * 4 and x.shape == (1, 3, 96, 96)
    # The whole model's ops sum to the measured all-on-device head, give or take the noise of timing.
    total = ops.edge_overhead_ms + sum(o.edge_ms for o in ops.ops)
    assert 0.5 < total / profile.cut("output").head_ms < 2.0
    assert Profile.load(profile.save(tmp_path / "p.json")) == profile
