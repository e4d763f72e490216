"""Graph reading and cut enumeration: on a hand-written DAG whose every cut is known, checked by
really running head∘tail in onnxruntime; on the small MobileNetV2 (names, residual blocks, lookup);
and the errors of loading a model that cannot be cut."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos.errors import SplitInferError
from splitter.graph.cuts import INPUT_CUT, OUTPUT_CUT, Cut, enumerate_cuts, find_cut, module_path
from splitter.graph.graph import Graph, graph_from_onnx
from splitter.sources import ModelSource, load_source

# ------------------------------------------------------------------------------ the hand-made DAG
#
#   x ─ Conv ─ Relu(r0) ─ Conv ─ Relu(r1) ┬─ Conv ─ Relu (branch A, a2) ┐
#                │                        └─ Conv        (branch B, b1) ┴─ Add(s1) ─ Conv(c2) ─ Add(s2) ─ Reshape ─ y
#                └──────────────────────────────── skip ──────────────────────────────────────┘
#
# plus static tensors: the initializers, a weight computed from two initializers (Mul) and the
# Reshape's target shape built from two Constant nodes (Concat).

STATIC = {"w0", "b0", "w1_raw", "w1_scale", "wa", "wb", "wc", "w1", "shape_batch", "shape_rest", "flat_shape"}

# head_size → (cut name, tensors that cross), derived by hand from the picture above.
EXPECTED_CUTS = {
    1: ("stem.conv/Conv", ("c0",)),
    2: ("stem.relu/Relu", ("r0",)),
    3: ("block.conv/Conv", ("r0", "c1")),
    4: ("block.relu/Relu", ("r0", "r1")),
    5: ("block.branch_a.0/Conv", ("r0", "r1", "a1")),
    6: ("block.branch_a.1/Relu", ("r0", "r1", "a2")),
    7: ("block.branch_b/Conv", ("r0", "a2", "b1")),
    8: ("block/Add", ("r0", "s1")),
    9: ("mix/Conv", ("r0", "c2")),
    10: ("Add", ("s2",)),
    11: (OUTPUT_CUT, ("y",)),
}


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
    return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)


def dag_model(*, names: dict[str, str] | None = None) -> onnx.ModelProto:
    """The model drawn above; `names` renames nodes (by their default name)."""
    rng = np.random.default_rng(7)
    initializers = [
        _weight(rng, "w0", (4, 3, 3, 3)),
        _weight(rng, "b0", (4,), 0.1),
        _weight(rng, "w1_raw", (4, 4, 3, 3)),
        numpy_helper.from_array(np.array(0.5, np.float32), "w1_scale"),
        _weight(rng, "wa", (4, 4, 3, 3)),
        _weight(rng, "wb", (4, 4, 1, 1)),
        _weight(rng, "wc", (4, 4, 3, 3)),
    ]
    pad = {"pads": [1, 1, 1, 1]}
    specs = [
        (
            "/shape/Constant",
            "Constant",
            [],
            ["shape_batch"],
            {"value": numpy_helper.from_array(np.array([1], np.int64))},
        ),
        (
            "/shape/Constant_1",
            "Constant",
            [],
            ["shape_rest"],
            {"value": numpy_helper.from_array(np.array([-1], np.int64))},
        ),
        ("/shape/Concat", "Concat", ["shape_batch", "shape_rest"], ["flat_shape"], {"axis": 0}),
        ("/stem/conv/Conv", "Conv", ["x", "w0", "b0"], ["c0"], pad),
        ("/stem/relu/Relu", "Relu", ["c0"], ["r0"], {}),
        ("/block/Mul", "Mul", ["w1_raw", "w1_scale"], ["w1"], {}),
        ("/block/conv/Conv", "Conv", ["r0", "w1"], ["c1"], pad),
        ("/block/relu/Relu", "Relu", ["c1"], ["r1"], {}),
        ("/block/branch_a/branch_a.0/Conv", "Conv", ["r1", "wa"], ["a1"], pad),
        ("/block/branch_a/branch_a.1/Relu", "Relu", ["a1"], ["a2"], {}),
        ("/block/branch_b/Conv", "Conv", ["r1", "wb"], ["b1"], {}),
        ("/block/Add", "Add", ["a2", "b1"], ["s1"], {}),
        ("/mix/Conv", "Conv", ["s1", "wc"], ["c2"], pad),
        ("/Add", "Add", ["c2", "r0"], ["s2"], {}),
        ("/Reshape", "Reshape", ["s2", "flat_shape"], ["y"], {}),
    ]
    names = names or {}
    nodes = [
        helper.make_node(op, ins, outs, name=names.get(name, name), **attrs) for name, op, ins, outs, attrs in specs
    ]
    graph = helper.make_graph(
        nodes,
        "dag",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        initializer=initializers,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def dag() -> onnx.ModelProto:
    # With every tensor's shape in value_info, as a ModelSource holds it (extraction needs them).
    return onnx.shape_inference.infer_shapes(dag_model(), strict_mode=True)


@pytest.fixture(scope="module")
def dag_graph(dag: onnx.ModelProto) -> Graph:
    return graph_from_onnx(dag)


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _dynamic_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if not set(n.input) <= STATIC | {i.name for i in model.graph.initializer}]


def test_the_graph_leaves_static_ops_out_and_knows_every_activation(dag_graph: Graph) -> None:
    assert [op.name for op in dag_graph.ops] == [
        "/stem/conv/Conv", "/stem/relu/Relu", "/block/conv/Conv", "/block/relu/Relu",
        "/block/branch_a/branch_a.0/Conv", "/block/branch_a/branch_a.1/Relu", "/block/branch_b/Conv",
        "/block/Add", "/mix/Conv", "/Add", "/Reshape",
    ]  # fmt: skip
    # Weight and shape inputs are not activations: ops list only the tensors that can cross.
    conv1 = dag_graph.ops[2]
    assert conv1.inputs == ("r0",) and conv1.outputs == ("c1",)
    assert dag_graph.ops[-1].inputs == ("s2",)
    assert dag_graph.inputs == ("x",) and dag_graph.outputs == ("y",)
    for name in ("c0", "r0", "c1", "r1", "a1", "a2", "b1", "s1", "c2", "s2"):
        info = dag_graph.tensors[name]
        assert (info.dtype, info.shape, info.nbytes) == ("float32", (1, 4, 8, 8), 4 * 64 * 4)
    assert dag_graph.tensors["y"].shape == (1, 256)


def test_enumerate_cuts_lists_every_prefix_cut_of_the_dag(dag_graph: Graph) -> None:
    cuts = enumerate_cuts(dag_graph)
    assert {c.head_size: (c.name, c.tensors) for c in cuts} == EXPECTED_CUTS
    assert [c.head_size for c in cuts] == sorted({c.head_size for c in cuts})  # strictly increasing
    assert len({c.name for c in cuts}) == len(cuts)
    assert cuts[-1].name == OUTPUT_CUT and cuts[-1].is_edge_only and cuts[-1].head_size == len(dag_graph.ops)
    assert not any(c.is_cloud_only for c in cuts) and INPUT_CUT not in {c.name for c in cuts}
    assert all(not (set(c.tensors) & STATIC) for c in cuts)
    # Inside the skip (from r0 to the last Add) the skip tensor crosses beside the branch's own.
    assert all(len(c.tensors) >= 2 and "r0" in c.tensors for c in cuts if 3 <= c.head_size <= 9)


def test_the_input_cut_exists_only_when_asked_for(dag_graph: Graph) -> None:
    with_input = enumerate_cuts(dag_graph, include_input=True)
    assert with_input[0] == Cut(INPUT_CUT, 0, ("x",)) and with_input[0].is_cloud_only
    assert with_input[1:] == enumerate_cuts(dag_graph)
    assert with_input[-1].name == OUTPUT_CUT


@pytest.mark.parametrize("head_size", range(0, 12))
def test_every_cut_separates_input_from_output(dag: onnx.ModelProto, dag_graph: Graph, head_size: int) -> None:
    (cut,) = [c for c in enumerate_cuts(dag_graph, include_input=True) if c.head_size == head_size]
    x = np.random.default_rng(head_size).standard_normal((1, 3, 8, 8)).astype(np.float32)
    expected = _run(dag, {"x": x})["y"]
    extractor = onnx.utils.Extractor(dag)
    feed = {"x": x}
    if not cut.is_cloud_only:
        head = extractor.extract_model(["x"], list(cut.tensors))
        # The head holds exactly the first head_size ops (static ones may be copied into both).
        assert [n.name for n in _dynamic_nodes(head)] == [op.name for op in dag_graph.ops[:head_size]]
        feed = _run(head, {"x": x})
        assert list(feed) == list(cut.tensors)
    if cut.is_edge_only:
        got = feed["y"]
    else:
        tail = extractor.extract_model(list(cut.tensors), ["y"])
        assert [n.name for n in _dynamic_nodes(tail)] == [op.name for op in dag_graph.ops[head_size:]]
        assert sorted(i.name for i in tail.graph.input if i.name not in STATIC) == sorted(cut.tensors)
        got = _run(tail, feed)["y"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_op_names_never_collide_with_the_reserved_cut_names() -> None:
    model = dag_model(names={"/stem/conv/Conv": "input", "/mix/Conv": "output"})
    cuts = enumerate_cuts(graph_from_onnx(model), include_input=True)
    assert len({c.name for c in cuts}) == len(cuts)
    assert [c.head_size for c in cuts if c.is_cloud_only] == [0]
    assert [c.head_size for c in cuts if c.is_edge_only] == [11]


# ----------------------------------------------------------------------- the small MobileNetV2


def test_mobilenet_has_many_cuts_with_module_path_names(
    mobilenet_source: ModelSource, mobilenet_cuts: list[Cut]
) -> None:
    graph = graph_from_onnx(mobilenet_source.model)
    cuts = mobilenet_cuts
    assert len(cuts) > 50
    assert [c.head_size for c in cuts] == sorted({c.head_size for c in cuts})
    assert len({c.name for c in cuts}) == len(cuts)
    assert cuts[0].name == "features.0.0/Conv" and cuts[-1].name == OUTPUT_CUT
    assert cuts[-1].tensors == ("output",) and cuts[-1].head_size == len(graph.ops)
    for cut in cuts[:-1]:
        assert cut.name == module_path(graph.ops[cut.head_size - 1].name)
        for name in cut.tensors:
            info = graph.tensors[name]
            assert info.dtype == "float32" and -1 not in info.shape and info.nbytes > 0
    names = {c.name for c in cuts}
    assert {"features.3.conv.0.2/Clip", "features.3/Add", "features.18.2/Clip", "GlobalAveragePool"} <= names


def test_residual_blocks_give_two_tensor_cuts(mobilenet_cuts: list[Cut]) -> None:
    block = [c for c in mobilenet_cuts if c.name.startswith("features.3")]
    assert [len(c.tensors) for c in block] == [2, 2, 2, 2, 2, 1]
    assert block[-1].name == "features.3/Add"
    # The skip input is the previous block's output, crossing beside the branch's tensor.
    skip = "/features/features.2/conv/conv.2/Conv_output_0"
    assert all(c.tensors[0] == skip for c in block[:-1])
    assert len({c.tensors[1] for c in block[:-1]}) == 5
    # A block without a residual (stride 2, features.4) cuts in one tensor.
    assert all(len(c.tensors) == 1 for c in mobilenet_cuts if c.name.startswith("features.4"))


@pytest.mark.parametrize(
    ("op_name", "path"),
    [
        ("/features/features.3/conv/conv.0/conv.0.2/Clip", "features.3.conv.0.2/Clip"),
        ("/features/features.3/conv/conv.2/Conv", "features.3.conv.2/Conv"),
        ("/features/features.18/features.18.0/Conv", "features.18.0/Conv"),
        ("/features/features.3/Add", "features.3/Add"),
        ("/classifier/classifier.1/Gemm", "classifier.1/Gemm"),
        ("/layer1/layer1.0/conv1/Conv", "layer1.0.conv1/Conv"),
        ("/GlobalAveragePool", "GlobalAveragePool"),
        ("Flatten_12", "Flatten_12"),
    ],
)
def test_module_path(op_name: str, path: str) -> None:
    assert module_path(op_name) == path


def test_find_cut_by_name_or_module_prefix(mobilenet_cuts: list[Cut]) -> None:
    cuts = mobilenet_cuts
    assert find_cut(cuts, "features.3/Add").name == "features.3/Add"
    assert find_cut(cuts, OUTPUT_CUT) is cuts[-1]
    last7 = find_cut(cuts, "features.7")
    assert last7.name == "features.7.conv.2/Conv"
    following = cuts[cuts.index(last7) + 1]
    assert following.name.startswith("features.8.")
    # `features.1` is not a prefix of `features.10` ... `features.18`.
    assert find_cut(cuts, "features.1").name == "features.1.conv.1/Conv"
    assert find_cut(cuts, "features.3.conv.1").name == "features.3.conv.1.2/Clip"
    assert find_cut(cuts, "features").name == "features.18.2/Clip"


def test_find_cut_names_the_unknown_cut(mobilenet_cuts: list[Cut]) -> None:
    with pytest.raises(SplitInferError) as info:
        find_cut(mobilenet_cuts, "features.99")
    message = str(info.value)
    assert message.startswith(f"no cut named 'features.99'; {len(mobilenet_cuts)} cuts, e.g. features.0.0/Conv, ")
    assert "splitinfer plan" in message
    with pytest.raises(SplitInferError, match="no cut named 'input'"):
        find_cut(mobilenet_cuts, INPUT_CUT)  # not enumerated without include_input


# ------------------------------------------------------------------------- loading .onnx files


def _symbolic_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 1, 1, 1], name="/conv/Conv"),
            helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
            helper.make_node("GlobalAveragePool", ["r"], ["out"], name="/pool/GlobalAveragePool"),
        ],
        "symbolic",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 1, 1])],
        initializer=[_weight(rng, "w", (2, 3, 3, 3))],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    model.ir_version = 8
    return model


def test_an_onnx_file_loads_with_its_shapes_and_cuts(tmp_path: Path) -> None:
    path = tmp_path / "dag.onnx"
    onnx.save(dag_model(), path)
    source = load_source(str(path))
    assert source.model_id == "dag" and source.input_shapes == {"x": (1, 3, 8, 8)}
    assert source.preprocess is not None and source.preprocess.size == 8
    cuts = enumerate_cuts(graph_from_onnx(source.model))
    assert {c.head_size: (c.name, c.tensors) for c in cuts} == EXPECTED_CUTS


def test_a_symbolic_non_batch_dimension_asks_for_the_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "symbolic.onnx"
    onnx.save(_symbolic_model(), path)
    with pytest.raises(SplitInferError) as info:
        load_source(str(path))
    assert "'image'" in str(info.value) and "H" in str(info.value) and "--input-shape" in str(info.value)
    source = load_source(str(path), input_shape=(1, 3, 16, 16))
    assert source.input_shapes == {"image": (1, 3, 16, 16)}
    graph = graph_from_onnx(source.model)
    assert graph.tensors["r"].shape == (1, 2, 16, 16) and graph.tensors["out"].shape == (1, 2, 1, 1)
    with pytest.raises(SplitInferError, match="rank 4"):
        load_source(str(path), input_shape=(1, 3, 16))


def test_a_symbolic_batch_dimension_is_read_as_one(tmp_path: Path) -> None:
    model = _symbolic_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = 12, 12
    path = tmp_path / "batch.onnx"
    onnx.save(model, path)
    assert load_source(str(path)).input_shapes == {"image": (1, 3, 12, 12)}


@pytest.mark.parametrize("name", ["notes.onnx", "notes.txt"])
def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("these are notes, not a model\n")
    with pytest.raises(SplitInferError, match=f"'{path}' is not a valid ONNX model"):
        load_source(str(path))


def test_a_missing_onnx_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SplitInferError, match="does not exist"):
        load_source(str(tmp_path / "missing.onnx"))


def test_an_empty_onnx_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(SplitInferError):
        load_source(str(path))


def test_a_registered_model_with_a_non_square_input_shape() -> None:
    try:
        source = load_source("resnet_tiny", input_shape=(1, 3, 64, 96))
    except SplitInferError:
        return  # refusing the shape is a fine answer too
    ((_, feed),) = source.samples(1)
    assert {name: a.shape for name, a in feed.items()} == source.input_shapes


def test_a_head_that_only_pads_or_reshapes_the_input_sends_the_raw_input() -> None:
    """x → Pad → Transpose → Conv → Relu: the Pad's and the Transpose's cuts send the image itself,
    moved; they are the raw input's cuts, left out with `input` unless asked for."""
    from splitter.graph.cuts import raw_input_tensors

    weight = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], name="pad"),
        helper.make_node("Transpose", ["padded"], ["moved"], perm=[0, 1, 3, 2], name="move"),
        helper.make_node("Conv", ["moved", "w"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes,
        "raw",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])],
        initializer=[weight, pads],
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    parsed = graph_from_onnx(model)
    assert raw_input_tensors(parsed) == {"x", "padded", "moved"}
    assert [c.name for c in enumerate_cuts(parsed)] == ["conv", OUTPUT_CUT]
    assert [c.name for c in enumerate_cuts(parsed, include_input=True)] == [
        INPUT_CUT,
        "pad",
        "move",
        "conv",
        OUTPUT_CUT,
    ]
    # The profile records it, so a plan without --allow-raw-input never picks one of them.
    from splitter.cost.cut_cost import cut_cost
    from splitter.cost.network import NetworkModel
    from splitter.profile.measure import profile_cuts
    from splitter.profile.timing import ProfileSettings

    cuts = enumerate_cuts(parsed, include_input=True)
    sample = {"x": np.ones((1, 3, 6, 6), np.float32)}
    settings = ProfileSettings(repeats=1, warmup=0, codecs=("fp32",))
    profile = profile_cuts(model, "raw", cuts, sample, settings, graph=parsed)
    network = NetworkModel(1e6, 10.0)
    raw = {c.name for c in profile.cuts if cut_cost(profile, c, network, "fp32").sends_input}
    assert raw == {INPUT_CUT, "pad", "move"}
