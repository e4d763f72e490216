"""Cost model, policies and plans on hand-made profiles whose answers are known; the Profile file
format; and one real profile of the small MobileNetV2."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from protos.codec import list_codecs
from protos.errors import SplitInferError
from splitter.cost.cut_cost import REPLY_FRAMING_BYTES, CutCost, cut_cost, monotone_times, predict
from splitter.cost.network import PRESETS, NetworkModel
from splitter.cost.plan import DEFAULT_CODEC, DEFAULT_POLICY, plan
from splitter.graph.cuts import Cut
from splitter.graph.graph import graph_from_onnx
from splitter.policies import Constraints, create_policy, list_policies
from splitter.profile.measure import profile_cuts
from splitter.profile.schema import CodecCost, CutProfile, EngineInfo, Profile
from splitter.profile.timing import ProfileSettings, median_ms, run_clock
from splitter.sources import ModelSource

CODECS = ("fp32", "int8+zstd")
ENGINE = EngineInfo("onnxruntime", "1.0", 1, ("CPUExecutionProvider",))


def cut_profile(
    name: str,
    head_size: int,
    head_ms: float,
    tail_ms: float,
    nbytes: int,
    *,
    encode_ms: float = 0.5,
    decode_ms: float = 0.25,
) -> CutProfile:
    """One cut: int8+zstd sends `nbytes`, fp32 four times as many (and costs nothing to code). The
    outputs' size is left unknown (0): the reply costs nothing unless a test gives it."""
    if name == "output":
        return CutProfile(name, head_size, ("out",), ((1, 10),), 0, head_ms, 0.0, {})
    return CutProfile(
        name=name,
        head_size=head_size,
        tensors=("x",) if name == "input" else (f"t{head_size}",),
        shapes=((1, nbytes),),
        raw_nbytes=4 * nbytes,
        head_ms=head_ms,
        tail_ms=tail_ms,
        codecs={
            "fp32": CodecCost(4 * nbytes, 0.0, 0.0, 0.0),
            "int8+zstd": CodecCost(nbytes, encode_ms, decode_ms, 0.004),
        },
    )


def make_profile(cuts: list[CutProfile], *, slowdown: float = 1.0) -> Profile:
    return Profile(
        model_id="hand",
        input_shapes={"x": (1, 3, 8, 8)},
        edge=ENGINE,
        server=dataclasses.replace(ENGINE, threads=8),
        edge_slowdown=slowdown,
        repeats=3,
        warmup=1,
        idle_gap_ms=0.0,
        machine={"platform": "test"},
        cuts=tuple(cuts),
        sample="hand-made",
    )


def chain_profile(*, slowdown: float = 1.0, with_input: bool = False) -> Profile:
    """A chain whose later cuts compute more on the device and send fewer bytes, as real ones do."""
    cuts = [
        cut_profile("a", 1, 1.0, 4.0, 100_000),
        cut_profile("b", 2, 3.0, 3.0, 30_000),
        cut_profile("c", 3, 6.0, 2.0, 8_000),
        cut_profile("d", 4, 10.0, 1.5, 2_000),
        cut_profile("e", 5, 15.0, 1.0, 400),
        cut_profile("output", 6, 17.0, 0.0, 0),
    ]
    if with_input:
        cuts.insert(0, cut_profile("input", 0, 0.0, 4.5, 150_000))
    return make_profile(cuts, slowdown=slowdown)


def test_the_cost_of_a_cut_is_the_formula() -> None:
    cut = cut_profile("mid", 3, head_ms=2.0, tail_ms=1.0, nbytes=1000, encode_ms=0.5, decode_ms=0.25)
    net = NetworkModel(1e6, 40.0)
    slow = make_profile([], slowdown=3.0)
    cost = cut_cost(slow, cut, net, "int8+zstd")
    energy = 2.0 * (6.0 + 1.5) + 5.3e-6 * 1000 * 1e3 + 0.5 * (8.0 + 40.0 + 0.25 + 1.0)
    expected = CutCost("mid", 3, 1, "int8+zstd", 1000, 6.0, 1.5, 8.0, 40.0, 0.25, 1.0, tensors=("t3",))
    assert cost == dataclasses.replace(expected, energy_mj=pytest.approx(energy))
    # head × slowdown + encode × slowdown + bytes·8/bandwidth + RTT + decode + tail
    assert cost.total_ms == pytest.approx(2.0 * 3 + 0.5 * 3 + 1000 * 8 / 1e6 * 1e3 + 40.0 + 0.25 + 1.0)
    fp32 = cut_cost(slow, cut, net, "fp32")
    assert (fp32.nbytes, fp32.transfer_ms, fp32.encode_ms, fp32.decode_ms) == (4000, 32.0, 0.0, 0.0)
    # The all-on-device cut costs its head alone: nothing crosses, no round trip.
    edge = cut_cost(slow, cut_profile("output", 9, 17.0, 0.0, 0), net, "int8+zstd")
    assert (edge.total_ms, edge.nbytes, edge.rtt_ms, edge.tensor_count, edge.codec) == (51.0, 0, 0.0, 0, "-")
    assert edge.is_edge_only and not cost.is_edge_only
    cloud = cut_cost(slow, cut_profile("input", 0, 0.0, 16.0, 150_000), net, "int8+zstd")
    assert cloud.sends_input and not cost.sends_input
    assert cloud.is_cloud_only and cloud.head_ms == 0.0 and cloud.total_ms == pytest.approx(1.5 + 1200 + 40 + 0.25 + 16)


def test_the_reply_crosses_the_downlink_on_every_split_cut() -> None:
    mid = cut_profile("mid", 3, head_ms=2.0, tail_ms=1.0, nbytes=1000)
    output = dataclasses.replace(cut_profile("output", 9, 17.0, 0.0, 0), raw_nbytes=4000)  # 1000 fp32 logits
    profile = make_profile([mid, output])
    net = NetworkModel(1e6, 40.0, downlink_bps=4e6)
    split, edge = (cut_cost(profile, cut, net, "int8+zstd") for cut in (mid, output))
    assert split.result_nbytes == 4000 + REPLY_FRAMING_BYTES
    assert split.result_ms == pytest.approx((4000 + REPLY_FRAMING_BYTES) * 8 / 4e6 * 1e3)
    assert split.total_ms == pytest.approx(2.0 + 0.5 + 8.0 + 40.0 + 0.25 + 1.0 + split.result_ms)
    assert edge.result_ms == 0.0 and split.choice().result_nbytes == split.result_nbytes
    # The decision table predicts it too, down the same downlink.
    assert split.choice().predicted_ms(1e6, 40.0, 4e6) == pytest.approx(split.total_ms)


def test_a_lucky_measurement_does_not_win_the_plan() -> None:
    """Cut "c" was measured faster than "b", whose ops it all runs: the planner prices it at the
    pooled time, so the cut chosen is the one that is really faster, not the luckiest."""
    cuts = [
        cut_profile("a", 1, 1.0, 4.0, 100_000),
        cut_profile("b", 2, 6.0, 3.0, 2_000),
        cut_profile("c", 3, 2.0, 3.5, 1_900),
        cut_profile("d", 4, 8.0, 1.0, 400),
        cut_profile("output", 5, 17.0, 0.0, 0),
    ]
    profile = make_profile(cuts)
    times = monotone_times(profile)
    heads = [times[c.name][0] for c in cuts]
    tails = [times[c.name][1] for c in cuts]
    assert heads == pytest.approx([1.0, 4.0, 4.0, 8.0, 17.0])
    assert tails == pytest.approx([4.0, 3.25, 3.25, 1.0, 0.0])
    # The raw measurements stay in the profile.
    assert profile.cut("c").head_ms == 2.0
    costs = {c.name: c for c in predict(profile, NetworkModel(1e6, 40.0), "int8+zstd")}
    assert costs["c"].head_ms == pytest.approx(4.0) and costs["c"].tail_ms == pytest.approx(3.25)


def test_predict_costs_every_cut_in_profile_order() -> None:
    profile = chain_profile(slowdown=2.0)
    net = PRESETS["4g"]
    costs = predict(profile, net, "int8+zstd")
    assert [c.name for c in costs] == [c.name for c in profile.cuts]
    for cost, cut in zip(costs, profile.cuts):
        assert cost == cut_cost(profile, cut, net, "int8+zstd")


def test_neurosurgeon_picks_the_minimum() -> None:
    profile = chain_profile()
    net = NetworkModel(8e6, 10.0)  # 1 byte = 1 µs
    result = plan(profile, net)
    assert (result.codec, result.policy) == (DEFAULT_CODEC, DEFAULT_POLICY)
    totals = {c.name: c.total_ms for c in result.costs}
    # a: 1+.5+100+10+.25+4   b: 3+.5+30+10+.25+3   c: 6+.5+8+10+.25+2   d: 10+.5+2+10+.25+1.5 ...
    assert totals == pytest.approx({"a": 115.75, "b": 46.75, "c": 26.75, "d": 24.25, "e": 27.15, "output": 17.0})
    assert result.chosen.name == "output" and result.chosen.total_ms == min(totals.values())
    split = plan(profile, net, constraints=Constraints(allow_edge_only=False))
    assert split.chosen.name == "d"
    assert split.costs == result.costs and split.baseline("output") == result.costs[-1]
    assert split.baseline("input") is None


def _tie_profile(order: list[str]) -> Profile:
    # Equal totals in exact binary arithmetic: head + tail is 10 for both, same bytes and codec.
    cuts = {"early": cut_profile("early", 2, 1.0, 9.0, 125), "late": cut_profile("late", 5, 2.0, 8.0, 125)}
    return make_profile([cuts[name] for name in order] + [cut_profile("output", 7, 1000.0, 0.0, 0)])


@pytest.mark.parametrize("order", [["early", "late"], ["late", "early"]])
def test_ties_go_to_the_smaller_head(order: list[str]) -> None:
    result = plan(_tie_profile(order), NetworkModel(1e6, 40.0))
    early, late = sorted(result.costs, key=lambda c: c.head_size)[:2]
    assert early.total_ms == late.total_ms
    assert result.chosen.name == "early"


def test_the_choice_moves_to_later_cuts_as_bandwidth_falls() -> None:
    profile = chain_profile(slowdown=5.0)
    chosen = []
    for bps in np.geomspace(1e10, 1e4, 40):
        chosen.append(
            plan(profile, NetworkModel(float(bps), 20.0), constraints=Constraints(allow_edge_only=False)).chosen
        )
    sizes = [c.head_size for c in chosen]
    assert sizes == sorted(sizes)
    assert chosen[0].name == "a" and chosen[-1].name == "e"
    assert {c.name for c in chosen} == {"a", "b", "c", "d", "e"}
    # Allowed to, the device keeps everything once the uplink is slow enough.
    assert plan(profile, NetworkModel(1e4, 20.0)).chosen.name == "output"
    assert plan(profile, NetworkModel(1e10, 20.0)).chosen.name == "a"


def test_edge_only_and_cloud_only_policies() -> None:
    net = PRESETS["wifi"]
    profile = chain_profile(with_input=True)
    assert plan(profile, net, policy="edge-only").chosen.name == "output"
    cloud = plan(profile, net, policy="cloud-only", constraints=Constraints(allow_raw_input=True))
    assert cloud.chosen.name == "input" and cloud.chosen.head_ms == 0.0
    assert cloud.baseline("input") == cloud.chosen
    # The input cut needs a constraint that lets the raw input leave the device ...
    with pytest.raises(
        SplitInferError,
        match=r"the constraints exclude the 'input' cut \(the raw input stays on the device \(--allow-raw-input",
    ):
        plan(profile, net, policy="cloud-only")
    # ... and a profile that measured it.
    with pytest.raises(SplitInferError, match="the profile has no 'input' cut"):
        plan(chain_profile(), net, policy="cloud-only", constraints=Constraints(allow_raw_input=True))
    with pytest.raises(SplitInferError, match="the constraints exclude the 'output' cut"):
        plan(chain_profile(), net, policy="edge-only", constraints=Constraints(allow_edge_only=False))
    # The neurosurgeon never sends the raw input by default, even where it would be fastest.
    fast = NetworkModel(1e12, 0.0)
    assert plan(profile, fast, constraints=Constraints(allow_raw_input=True)).chosen.name == "input"
    assert plan(profile, fast).chosen.name == "a"


def test_constraints() -> None:
    net = NetworkModel(1e10, 1.0)
    profile = chain_profile()
    assert plan(profile, net).chosen.name == "a"
    assert plan(profile, net, constraints=Constraints(min_head_ops=3)).chosen.name == "c"
    assert plan(profile, net, constraints=Constraints(min_head_ops=6)).chosen.name == "output"
    with pytest.raises(
        SplitInferError,
        match=r"no cut satisfies the constraints \(.*at least 7 ops on the device \(--min-head-ops\)\): the largest head has 6 ops",
    ):
        plan(profile, net, constraints=Constraints(min_head_ops=7))
    with pytest.raises(SplitInferError, match="no cut satisfies"):
        plan(profile, net, constraints=Constraints(min_head_ops=6, allow_edge_only=False))
    admitted = Constraints(min_head_ops=2, allow_edge_only=False).admit(predict(profile, net, "fp32"))
    assert [c.name for c in admitted] == ["b", "c", "d", "e"]


def test_a_cut_that_still_sends_the_model_input_is_private_by_default() -> None:
    # A model that uses its input again late: the input crosses alongside the cut tensor.
    leaky = dataclasses.replace(cut_profile("leaky", 1, 0.5, 4.0, 100), tensors=("x", "t1"))
    profile = make_profile([leaky, cut_profile("b", 2, 3.0, 3.0, 30_000), cut_profile("output", 3, 50.0, 0.0, 0)])
    fast = NetworkModel(1e10, 1.0)
    assert plan(profile, fast).chosen.name == "b"
    assert plan(profile, fast, constraints=Constraints(allow_raw_input=True)).chosen.name == "leaky"


def test_unknown_policy_and_codec_are_named() -> None:
    assert {"neurosurgeon", "edge-only", "cloud-only"} <= set(list_policies())
    with pytest.raises(SplitInferError) as info:
        plan(chain_profile(), PRESETS["4g"], policy="fastest")
    assert str(info.value) == f"unknown policy 'fastest'; registered: {', '.join(list_policies())}"
    with pytest.raises(SplitInferError, match="registered: cloud-only, edge-only, energy, .*neurosurgeon"):
        create_policy("")
    with pytest.raises(SplitInferError) as info:
        plan(chain_profile(), PRESETS["4g"], codec="fp16+zstd")
    assert str(info.value) == "codec 'fp16+zstd' was not profiled; profiled: ['fp32', 'int8+zstd']"


def test_planning_is_deterministic(tmp_path: Path) -> None:
    profile = chain_profile(slowdown=3.0)
    first = plan(profile, PRESETS["3g"])
    assert all(plan(profile, PRESETS["3g"]) == first for _ in range(5))
    reloaded = plan(Profile.load(profile.save(tmp_path / "p.json")), PRESETS["3g"])
    assert reloaded == first


# ------------------------------------------------------------------------------- the file format


def test_a_profile_round_trips_through_json(tmp_path: Path) -> None:
    profile = chain_profile(slowdown=7.5, with_input=True)
    path = profile.save(tmp_path / "profile.json")
    data = json.loads(path.read_text())
    assert data["format_version"] == 1 and data["model_id"] == "hand" and len(data["cuts"]) == 7
    loaded = Profile.load(path)
    assert loaded == profile
    assert loaded.cut("c") == profile.cuts[3]
    assert isinstance(loaded.cuts[0].shapes[0], tuple) and isinstance(loaded.edge.providers, tuple)
    assert path.read_text() == loaded.save(tmp_path / "again.json").read_text()
    with pytest.raises(SplitInferError, match="profile of 'hand' has no cut 'zz'"):
        loaded.cut("zz")


def _mangled(profile: Profile, edit) -> dict:
    data = json.loads(json.dumps(dataclasses.asdict(profile)))
    edit(data)
    return data


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda d: d.update(format_version=2), "profile format_version 2 is not 1"),
        (lambda d: d.pop("format_version"), "profile format_version None is not 1"),
        (lambda d: d.pop("cuts"), "malformed profile: KeyError: 'cuts'"),
        (lambda d: d["cuts"][1].pop("head_ms"), "malformed profile: KeyError: 'head_ms'"),
        (lambda d: d["cuts"][1].update(head_ms="fast"), "malformed profile: ValueError"),
        (lambda d: d["cuts"][1].update(shapes=[7]), "malformed profile: TypeError"),
        (lambda d: d["edge"].pop("threads"), "malformed profile: KeyError: 'threads'"),
        (lambda d: d["cuts"][1]["codecs"]["fp32"].update(extra=1), "malformed profile: TypeError"),
    ],
)
def test_malformed_profiles_are_refused(tmp_path: Path, edit, fragment: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_mangled(chain_profile(), edit)))
    with pytest.raises(SplitInferError) as info:
        Profile.load(path)
    assert fragment in str(info.value)


def test_unreadable_profiles_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SplitInferError, match="profile '.*missing.json' does not exist"):
        Profile.load(tmp_path / "missing.json")
    (tmp_path / "half.json").write_text('{"model_id": ')
    with pytest.raises(SplitInferError, match="is not valid JSON"):
        Profile.load(tmp_path / "half.json")


@pytest.mark.parametrize("kind", ["list", "null", "codecs-list", "shapes-list", "binary", "directory"])
def test_profiles_of_the_wrong_kind_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "profile.json"
    if kind == "list":
        path.write_text("[]")
    elif kind == "null":
        path.write_text("null")
    elif kind == "codecs-list":
        path.write_text(json.dumps(_mangled(chain_profile(), lambda d: d["cuts"][0].update(codecs=[]))))
    elif kind == "shapes-list":
        path.write_text(json.dumps(_mangled(chain_profile(), lambda d: d.update(input_shapes=[]))))
    elif kind == "binary":
        path.write_bytes(b"\x08\x07\xff\xfe\x00 an onnx file given by mistake")
    else:
        path.mkdir()
    with pytest.raises(SplitInferError):
        Profile.load(path)


def test_profile_settings_are_checked() -> None:
    for kwargs, fragment in [
        ({"repeats": 0}, "repeats must be at least 1"),
        ({"edge_threads": 0}, "edge_threads must be at least 1"),
        ({"warmup": -1}, "warmup must be non-negative"),
        ({"edge_slowdown": 0.0}, "edge_slowdown must be positive"),
    ]:
        with pytest.raises(SplitInferError, match=fragment):
            ProfileSettings(**kwargs)
    with pytest.raises(SplitInferError, match="unknown encoding 'int4'"):
        ProfileSettings(codecs=("int4",))


# ------------------------------------------------------------------------------- a real profile


@pytest.fixture(scope="module")
def real_profile(mobilenet_source: ModelSource) -> tuple[Profile, list[Cut]]:
    from splitter.pipeline import model_cuts

    cuts = model_cuts(mobilenet_source, include_input=True)
    name, feed = mobilenet_source.samples(1)[0]
    settings = ProfileSettings(edge_threads=1, server_threads=2, repeats=2, warmup=1, edge_slowdown=4.0)
    return profile_cuts(mobilenet_source.model, mobilenet_source.model_id, cuts, feed, settings, sample_name=name), cuts


def test_a_real_profile_measures_every_cut(
    real_profile: tuple[Profile, list[Cut]], mobilenet_source: ModelSource
) -> None:
    profile, cuts = real_profile
    graph = graph_from_onnx(mobilenet_source.model)
    assert profile.model_id == "mobilenet_v2_035" and profile.sample == "astronaut"
    assert profile.input_shapes == {"input": (1, 3, 96, 96)}
    assert [(c.name, c.head_size, c.tensors) for c in profile.cuts] == [(c.name, c.head_size, c.tensors) for c in cuts]
    all_codecs = {c.name for c in list_codecs()}
    for cut in profile.cuts:
        if cut.is_cloud_only:
            assert cut.head_ms == 0.0 and cut.tail_ms > 0
        elif cut.is_edge_only:
            assert cut.head_ms > 0 and cut.tail_ms == 0.0 and cut.codecs == {}
            continue
        else:
            assert cut.head_ms > 0 and cut.tail_ms > 0
        assert cut.shapes == tuple(graph.tensors[t].shape for t in cut.tensors)
        assert cut.raw_nbytes == sum(math.prod(s) * 4 for s in cut.shapes)
        assert set(cut.codecs) == all_codecs
        # Whole wire messages: the payload plus each tensor's name, dtype and shape.
        framing = 200 * len(cut.tensors)
        assert cut.raw_nbytes < cut.codecs["fp32"].nbytes < cut.raw_nbytes + framing
        assert cut.codecs["fp32"].rel_error == 0.0
        assert cut.raw_nbytes // 2 < cut.codecs["fp16"].nbytes < cut.raw_nbytes // 2 + framing
        assert cut.codecs["int8+zstd"].nbytes < cut.raw_nbytes / 3, cut.name
        assert 0 < cut.codecs["int8"].rel_error < 0.05, cut.name
        assert all(c.encode_ms >= 0 and c.decode_ms >= 0 for c in cut.codecs.values())
    # The head grows along the model: all-on-device costs more than the first layer.
    assert profile.cut("output").head_ms > profile.cuts[1].head_ms


def test_a_real_profile_records_how_it_was_measured(real_profile: tuple[Profile, list[Cut]], tmp_path: Path) -> None:
    profile, _ = real_profile
    assert profile.edge == EngineInfo("onnxruntime", ort.__version__, 1, ("CPUExecutionProvider",))
    assert profile.server.threads == 2 and profile.server.engine == "onnxruntime"
    assert (profile.repeats, profile.warmup, profile.edge_slowdown) == (2, 1, 4.0)
    assert {"platform", "processor", "cpu_count", "python", "numpy"} <= set(profile.machine)
    assert all(profile.machine.values())
    assert Profile.load(profile.save(tmp_path / "real.json")) == profile
    # Planning needs only the profile: a slow uplink keeps more on the (4× slower) device.
    slow = plan(profile, PRESETS["cat1"], constraints=Constraints(allow_edge_only=False)).chosen
    fast = plan(profile, NetworkModel(1e11, 0.0), constraints=Constraints(allow_edge_only=False)).chosen
    assert slow.nbytes <= fast.nbytes


def test_one_thread_runs_are_timed_by_their_cpu_clock() -> None:
    """A one-thread session runs in the calling thread, whose CPU clock leaves out the time other
    processes take from it; here, a run that mostly waits."""
    assert run_clock(1) is time.thread_time and run_clock(2) is time.perf_counter
    assert median_ms(lambda: time.sleep(0.02), repeats=3, warmup=0, clock=run_clock(1)) < 5
    assert median_ms(lambda: time.sleep(0.02), repeats=3, warmup=0, clock=run_clock(2)) >= 20


def test_every_split_cut_pays_the_calls_own_cost_once() -> None:
    """Profile.call_ms (a gRPC call's cost beyond its network) is charged to each split cut and not
    to the all-on-device one; a decision table leaves it out (the device's RTT is timed through
    its own calls); a profile from before it was measured charges nothing."""
    mid = cut_profile("mid", 3, head_ms=2.0, tail_ms=1.0, nbytes=1000)
    output = cut_profile("output", 9, 17.0, 0.0, 0)
    net = NetworkModel(1e6, 40.0)
    uncharged = make_profile([mid, output])
    charged = dataclasses.replace(uncharged, call_ms=0.4)
    split, edge = (cut_cost(charged, cut, net, "int8+zstd") for cut in (mid, output))
    before = cut_cost(uncharged, mid, net, "int8+zstd")
    assert split.call_ms == 0.4 and split.total_ms == pytest.approx(before.total_ms + 0.4)
    assert edge.call_ms == 0.0 and edge.total_ms == cut_cost(uncharged, output, net, "int8+zstd").total_ms
    assert split.choice().predicted_ms(1e6, 40.0) == pytest.approx(before.total_ms)
    data = json.loads(json.dumps(dataclasses.asdict(charged)))
    assert Profile.from_dict(data).call_ms == 0.4
    del data["call_ms"]
    assert Profile.from_dict(data).call_ms == 0.0


def test_the_calls_own_cost_is_measured() -> None:
    from splitter.profile.call_cost import measure_call_ms

    # A raw gRPC call on loopback: a fraction of a millisecond on any machine this runs on, not 0.
    assert 0.01 < measure_call_ms(calls=20) < 50
