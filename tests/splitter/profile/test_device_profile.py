"""DeviceProfiles (splitter.profile.predict.device): one calibrated here on the part of the suite a small
MobileNetV2 needs, loaded, checked against measured heads and tails, refused when malformed, and
used to plan: a Profile whose head and tail times are predicted, with the device's power."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from edge_runtime.calibration import Timing, calibrate, load_suite, probe_block_size, time_ms, write_profile
from protos.device_profile import DeviceProfile
from protos.errors import SplitInferError
from protos.power import PowerModel
from splitinfer.app import app
from splitter.cost.network import NetworkModel
from splitter.cost.plan import plan
from splitter.graph.cuts import Cut, device_ops
from splitter.graph.graph import graph_from_onnx
from splitter.profile.predict.device import head_ms, op_ms, predicted_profile, session_ms, tail_ms
from splitter.profile.predict.features import kernels
from splitter.profile.predict.suite import Builder
from splitter.profile.schema import Profile
from splitter.profile.timing import ProfileSettings, session
from splitter.sources import ModelSource

TIMING = Timing(repeats=9, warmup=1, idle_gap_ms=1.0, rounds=2, clock="cpu")


@pytest.fixture(scope="module")
def device_path(
    mobilenet_source: ModelSource, mobilenet_cuts: list[Cut], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """Calibrated on the benchmarks that run only kinds of kernel the model's heads and tails run (a quick profile)."""
    graph = graph_from_onnx(mobilenet_source.model)
    block = probe_block_size(1)
    needed = {"reorder", "conv_activation", "conv_sum"}
    for cut in mobilenet_cuts:
        head = device_ops(graph, cut)
        needed |= {k.op_class for k in kernels(graph, head, cut.tensors, block)}
        needed |= {k.op_class for k in kernels(graph, [op for op in graph.ops if op not in head], graph.outputs, block)}
    subset = [
        e["name"]
        for e in load_suite()["benchmarks"]
        if set(e["features"][str(block)]) <= needed and e["name"] != "probe"
    ]
    power = {"compute_w": 3.0, "radio_j_per_byte": 1e-6, "idle_w": 0.25, "source": "test"}
    document = calibrate(1, TIMING, name="test-device", only=subset, power=power)
    return write_profile(document, tmp_path_factory.mktemp("device") / "device.json")


@pytest.fixture(scope="module")
def device(device_path: Path) -> DeviceProfile:
    return DeviceProfile.load(device_path)


def test_a_calibrated_profile_loads_with_its_engine_power_and_regressions(device: DeviceProfile) -> None:
    assert device.name == "test-device" and device.threads == 1
    assert device.nchwc_block == probe_block_size(1)
    assert device.power == PowerModel(3.0, 1e-6, 0.25, "test")
    assert device.overhead_ms > 0
    assert any(kind.startswith("conv_dw") for kind in device.coefficients)
    assert "test-device" in device.describe()


def middle_cut(cuts: list[Cut]) -> Cut:
    return cuts[len(cuts) // 2]


def test_predictions_are_near_measured_heads_and_tails(
    device: DeviceProfile, mobilenet_source: ModelSource, mobilenet_cuts: list[Cut]
) -> None:
    """Loosely (a factor 1.6, or 0.3 ms for sub-millisecond runs, where a shared machine's cache and
    clock noise alone double a run: a 0.24 ms tail was predicted at 0.48 ms in 2 of 4 runs one
    afternoon, 0.15 against 0.31 ms in CI before): the profile is quick; bench/predict.py
    measures the error (issue: device latency prediction)."""
    model, graph = mobilenet_source.model, graph_from_onnx(mobilenet_source.model)
    feed = mobilenet_source.samples(1)[0][1]
    extractor = onnx.utils.Extractor(model)
    cut = middle_cut(mobilenet_cuts)
    head = session(extractor.extract_model(list(feed), list(cut.tensors)), 1)
    sent = dict(zip(cut.tensors, head.run(None, feed)))
    tail = session(extractor.extract_model(list(cut.tensors), list(graph.outputs)), 1)
    whole = session(model, 1)
    for label, predicted, run in [
        ("head", head_ms(device, graph, cut), lambda: head.run(None, feed)),
        ("tail", tail_ms(device, graph, cut), lambda: tail.run(None, sent)),
        ("whole model", session_ms(device, graph, graph.ops, graph.outputs), lambda: whole.run(None, feed)),
    ]:
        # Measured again, up to three rounds, while it disagrees: another process's burst on this
        # shared machine doubles a sub-millisecond run (0.86 ms for a 0.41 ms prediction in one
        # fresh-clone CI run); a prediction that is really off disagrees every round.
        tried = []
        for _ in range(3):
            tried.append(min(time_ms(run, 10, 2, 1.0, "cpu") for _ in range(3)))
            if 1 / 1.6 < predicted / tried[-1] < 1.6 or abs(predicted - tried[-1]) < 0.3:
                break
        else:
            raise AssertionError(
                f"{label}: predicted {predicted:.2f} ms, measured {', '.join(f'{m:.2f}' for m in tried)} ms"
            )


def test_a_split_costs_more_than_the_whole_model_by_the_sessions_and_lost_fusions(
    device: DeviceProfile, mobilenet_source: ModelSource, mobilenet_cuts: list[Cut]
) -> None:
    graph = graph_from_onnx(mobilenet_source.model)
    whole = session_ms(device, graph, graph.ops, graph.outputs)
    for cut in mobilenet_cuts[1:-1]:
        assert head_ms(device, graph, cut) + tail_ms(device, graph, cut) >= whole + device.overhead_ms - 1e-9, cut.name
    # Op shares of a whole run add up to it, less the per-run cost.
    assert sum(op_ms(device, graph).values()) == pytest.approx(whole - device.overhead_ms)


def write_json(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_bad_files_are_refused_naming_the_problem(device_path: Path, tmp_path: Path) -> None:
    good = json.loads(device_path.read_text())
    with pytest.raises(SplitInferError, match="'/nonexistent/phone.json' does not exist"):
        DeviceProfile.load("/nonexistent/phone.json")
    with pytest.raises(SplitInferError, match="format_version 7 is not 1"):
        DeviceProfile.load(write_json(tmp_path / "v7.json", {**good, "format_version": 7}))
    with pytest.raises(SplitInferError, match="not a device profile"):
        DeviceProfile.load(write_json(tmp_path / "profile.json", {"format_version": 1, "cuts": []}))
    with pytest.raises(SplitInferError, match="features .* calibrate again"):
        DeviceProfile.load(write_json(tmp_path / "old.json", {**good, "features": ["one", "macs"]}))
    with pytest.raises(SplitInferError, match="malformed device profile: KeyError: 'coefficients'"):
        DeviceProfile.load(write_json(tmp_path / "cut.json", {k: v for k, v in good.items() if k != "coefficients"}))
    (tmp_path / "text.json").write_text("{not json")
    with pytest.raises(SplitInferError, match="cannot be read"):
        DeviceProfile.load(tmp_path / "text.json")


def test_a_kind_without_a_regression_or_fallback_is_an_error_naming_it(
    device: DeviceProfile, mobilenet_source: ModelSource
) -> None:
    graph = graph_from_onnx(mobilenet_source.model)
    bare = dataclasses.replace(
        device, coefficients={k: v for k, v in device.coefficients.items() if k not in ("gemm", "other")}
    )
    with pytest.raises(SplitInferError, match="no model for 'gemm' kernels"):
        session_ms(bare, graph, graph.ops, graph.outputs)


@pytest.fixture(scope="module")
def predicted(device: DeviceProfile, mobilenet_source: ModelSource) -> Profile:
    server = dataclasses.replace(device, name="test-server", power=PowerModel())
    settings = ProfileSettings(repeats=1, warmup=0, idle_gap_ms=0.0, codecs=("fp32", "int8+zstd"))
    return predicted_profile(mobilenet_source, edge=device, server=server, settings=settings)


def test_a_predicted_profile_carries_the_predictions_marked_and_the_edge_power(
    predicted: Profile, device: DeviceProfile, mobilenet_source: ModelSource, tmp_path: Path
) -> None:
    graph = graph_from_onnx(mobilenet_source.model)
    assert set(predicted.predicted_from) == {"edge", "server"} and "test-server" in predicted.predicted_from["server"]
    assert predicted.power == device.power
    for cut in predicted.cuts:
        assert cut.head_ms == (
            head_ms(device, graph, Cut(cut.name, cut.head_size, cut.tensors)) if cut.head_size else 0.0
        )
        assert cut.is_edge_only or cut.codecs["int8+zstd"].nbytes > 0
    # Per-op times for the min-cut partitioner: the device's shares of a whole run.
    assert {op.name: op.edge_ms for op in predicted.ops.ops} == op_ms(device, graph)
    assert predicted.ops.edge_overhead_ms == device.overhead_ms and "test-device" in predicted.ops.source
    assert Profile.load(predicted.save(tmp_path / "p.json")) == predicted


def test_the_energy_policy_prices_the_device_power_of_a_predicted_profile(predicted: Profile) -> None:
    network = NetworkModel(5e6, 40.0)
    result = plan(predicted, network, codec="int8+zstd", policy="energy")
    chosen, edge_only = result.chosen, result.baseline("output")
    assert edge_only.energy_mj == pytest.approx(3.0 * predicted.cut("output").head_ms)
    assert chosen.energy_mj <= edge_only.energy_mj


def tiny_network() -> onnx.ModelProto:
    """A stem, an inverted-residual-like block and a classifier: kinds the device profile prices."""
    b = Builder()
    clip = lambda y: b.op("Clip", [y, b.constant(()), b.constant((), 6.0)])  # noqa: E731
    y = clip(b.conv(b.input((1, 3, 32, 32)), 3, 16, 3, 2))
    y = b.conv(clip(b.conv(y, 16, 16, 3, 1, group=16)), 16, 24, 1)
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    return b.model(b.op("Gemm", [y, b.constant((10, 24)), b.constant((10,))], transB=1))


def test_profile_and_plan_commands_use_device_profiles(device_path: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    onnx.save(tiny_network(), model)
    out = tmp_path / "predicted.json"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "profile",
            str(model),
            "--edge-device",
            str(device_path),
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "edge times predicted from DeviceProfile 'test-device'" in result.output
    profile = Profile.load(out)
    assert set(profile.predicted_from) == {"edge"} and profile.power == PowerModel(3.0, 1e-6, 0.25, "test")
    result = runner.invoke(app, ["plan", str(out), "--policy", "energy"])
    assert result.exit_code == 0, result.output
    assert "edge times predicted from" in result.output and "chosen:" in result.output
    result = runner.invoke(app, ["profile", str(model), "--edge-device", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "missing.json' does not exist" in result.output
    result = runner.invoke(app, ["profile", str(model), "--edge-device", str(device_path), "--edge-slowdown", "3"])
    assert result.exit_code == 2 and "edge_slowdown 3 scales measured head times" in result.output
