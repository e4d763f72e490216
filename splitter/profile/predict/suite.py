"""The calibration suite: a fixed set of micro-benchmark ONNX models that `splitinfer calibrate` times
on a device to fit its DeviceProfile, generated here at development time and committed to
edge_runtime/calibration_suite/ (the device has neither torch nor the onnx package).

    python -m splitter.profile.predict.suite        # regenerate; a test fails when the files are stale

Each model is one op or a short chain, in shapes that span the networks this project cuts (stems,
depthwise and pointwise convolutions from 7×7 to 112×112, dense layers, pools, the elementwise ops
of hard-swish blocks, upsampling). Weights are made by ConstantOfShape from tiny shape tensors:
onnxruntime folds them into constant initializers when the session loads (prepacking and blocked
layouts apply as to real weights; timing is the same) and the files stay a few hundred bytes.

The manifest lists, for every model, its input shapes, the bytes it returns, and the features of
the kernels onnxruntime runs for it (splitter.profile.predict.features) under each NCHWc block size, so the device fits its regressions
with numpy alone after probing its own block size (`probe`: an 8-channel Conv).
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from protos.calibration_suite import MANIFEST_FILE, suite_manifest
from protos.device_profile import FEATURES
from splitter.graph.graph import graph_from_onnx
from splitter.profile.predict.features import NCHWC_BLOCKS, kernels

SUITE_DIR = Path(__file__).resolve().parents[1] / "edge_runtime" / "calibration_suite"
ELEMENTWISE_CHAIN = 4
OPSET = 17


@dataclass
class Builder:
    """A one-model graph under construction: activations in, ops, weights by ConstantOfShape."""

    inputs: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    count: int = 0

    def input(self, shape: tuple[int, ...]) -> str:
        name = f"x{len(self.inputs)}"
        self.inputs.append((name, shape))
        return name

    def constant(self, shape: tuple[int, ...], value: float = 0.01) -> str:
        self.count += 1
        dims = f"s{self.count}"
        self.initializers.append(numpy_helper.from_array(np.array(shape, np.int64), dims))
        name = f"c{self.count}"
        self.nodes.append(
            helper.make_node(
                "ConstantOfShape", [dims], [name], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [value])
            )
        )
        return name

    def op(self, op_type: str, inputs: list[str], **attributes: object) -> str:
        self.count += 1
        name = f"t{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"{op_type}_{self.count}", **attributes))
        return name

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, group: int = 1) -> str:
        weight = self.constant((cout, cin // group, k, k))
        bias = self.constant((cout,))
        return self.op(
            "Conv", [x, weight, bias], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4, group=group
        )

    def model(self, output: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "bench",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(s)) for n, s in self.inputs],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="splitinfer-calibration"
        )
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _image(b: Builder, c: int, hw: int) -> str:
    return b.input((1, c, hw, hw))


def benchmarks() -> Iterator[tuple[str, onnx.ModelProto]]:
    """(name, model) of every micro-benchmark, in a fixed order."""
    b = Builder()
    yield "overhead", b.model(b.op("Relu", [b.input((1,))]))
    b = Builder()
    yield "probe", b.model(b.conv(_image(b, 8, 28), 8, 8, 3))

    # Plain convolutions: stems (3 input channels, 3×3 and 7×7), 3×3 at every stage, strided.
    for cin, cout, hw, k, stride in [
        (3, 16, 112, 3, 2), (3, 32, 112, 3, 2), (3, 64, 112, 7, 2), (3, 16, 160, 3, 2),
        (16, 16, 56, 3, 1), (32, 32, 28, 3, 1), (64, 64, 28, 3, 1), (64, 64, 14, 3, 1), (128, 128, 14, 3, 1),
        (256, 256, 7, 3, 1), (512, 512, 7, 3, 1), (64, 128, 28, 3, 2), (128, 256, 14, 3, 2), (24, 40, 28, 3, 2),
        (48, 48, 40, 3, 1), (96, 96, 20, 3, 1), (40, 40, 14, 5, 1), (16, 24, 56, 3, 2),
    ]:  # fmt: skip
        b = Builder()
        yield f"conv_{cin}x{cout}_k{k}s{stride}_{hw}", b.model(b.conv(_image(b, cin, hw), cin, cout, k, stride))
    # Pointwise: MobileNet expansions and projections, ResNet downsamples, odd channel counts.
    for cin, cout, hw, stride in [
        (16, 96, 56, 1), (96, 24, 56, 1), (24, 144, 56, 1), (144, 24, 56, 1), (144, 32, 28, 1), (32, 192, 28, 1),
        (192, 64, 14, 1), (64, 384, 14, 1), (384, 96, 14, 1), (96, 576, 14, 1), (576, 160, 7, 1), (160, 960, 7, 1),
        (960, 320, 7, 1), (320, 1280, 7, 1), (64, 128, 56, 2), (256, 512, 14, 2), (42, 96, 20, 1), (96, 42, 40, 1),
        (192, 48, 1, 1), (48, 192, 1, 1), (16, 16, 160, 1), (512, 512, 7, 1),
    ]:  # fmt: skip
        b = Builder()
        yield f"conv_pw_{cin}x{cout}_s{stride}_{hw}", b.model(b.conv(_image(b, cin, hw), cin, cout, 1, stride))
    # Depthwise 3×3 and 5×5, both strides.
    for c, hw, k, stride in [
        (16, 112, 3, 1), (32, 112, 3, 1), (96, 112, 3, 2), (144, 56, 3, 1), (144, 56, 3, 2), (192, 28, 3, 1),
        (192, 28, 3, 2), (384, 14, 3, 1), (576, 14, 3, 1), (576, 14, 3, 2), (960, 7, 3, 1), (24, 80, 3, 1),
        (48, 80, 3, 2), (72, 28, 5, 1), (240, 14, 5, 1), (120, 28, 5, 2), (96, 40, 5, 1),
    ]:  # fmt: skip
        b = Builder()
        yield f"conv_dw_{c}_k{k}s{stride}_{hw}", b.model(b.conv(_image(b, c, hw), c, c, k, stride, group=c))
    # With a fused activation (ReLU6 as Clip, ReLU, hard sigmoid): one more pass over the output.
    for cin, cout, hw, k, group, act in [
        (24, 144, 56, 1, 1, "Clip"), (16, 96, 112, 1, 1, "Clip"), (32, 192, 28, 1, 1, "Clip"), (64, 384, 14, 1, 1, "Clip"),
        (96, 576, 14, 1, 1, "Clip"), (160, 960, 7, 1, 1, "Clip"), (144, 144, 56, 3, 144, "Clip"), (192, 192, 28, 3, 192, "Clip"),
        (576, 576, 14, 3, 576, "Clip"), (3, 32, 112, 3, 1, "Clip"), (64, 64, 56, 3, 1, "Relu"), (128, 128, 28, 3, 1, "Relu"),
        (256, 64, 14, 1, 1, "Relu"), (48, 12, 1, 1, 1, "Relu"), (12, 48, 1, 1, 1, "HardSigmoid"),
    ]:  # fmt: skip
        b = Builder()
        y = b.conv(_image(b, cin, hw), cin, cout, k, 1, group)
        y = b.op("Clip", [y, b.constant(()), b.constant((), 6.0)]) if act == "Clip" else b.op(act, [y])
        yield f"conv_{act.lower()}_{cin}x{cout}_k{k}g{group}_{hw}", b.model(y)
    # With a fused sum (a residual add), with and without an activation after it. The sum fuses
    # only with a tensor already in the blocked layout, so the residual comes from a pointwise Conv.
    for c, hw, k, act in [
        (24, 56, 1, ""),
        (64, 56, 3, "Relu"),
        (128, 28, 3, "Relu"),
        (96, 14, 1, ""),
        (160, 7, 1, ""),
        (32, 28, 1, ""),
    ]:
        b = Builder()
        residual = b.conv(_image(b, c, hw), c, c, 1)
        y = b.op("Add", [b.conv(residual, c, c, k), residual])
        yield f"conv_sum{'_' + act.lower() if act else ''}_{c}_k{k}_{hw}", b.model(b.op(act, [y]) if act else y)
    for cin, cout, hw, group in [(32, 64, 28, 2), (64, 64, 14, 4), (128, 128, 14, 8)]:
        b = Builder()
        yield f"conv_group_{cin}x{cout}_g{group}_{hw}", b.model(b.conv(_image(b, cin, hw), cin, cout, 3, 1, group))
    # Small convolutions, alone and in chains of inverted-residual blocks: a small network (or a
    # big one at a small input) is mostly what each kernel costs whatever its size, and what the
    # first kernel of a kind costs a run on top, which only chains tell apart.
    for cin, cout, hw, k, group in [
        (16, 16, 7, 1, 1), (32, 32, 4, 1, 1), (64, 64, 3, 1, 1), (128, 128, 3, 1, 1), (24, 144, 12, 1, 1), (144, 24, 12, 1, 1),
        (32, 32, 7, 3, 32), (144, 144, 12, 3, 144), (96, 96, 3, 3, 96), (576, 576, 3, 3, 576), (16, 16, 7, 3, 1), (32, 32, 4, 3, 1),
    ]:  # fmt: skip
        b = Builder()
        yield f"conv_small_{cin}x{cout}_k{k}g{group}_{hw}", b.model(b.conv(_image(b, cin, hw), cin, cout, k, 1, group))
    for c, expanded, hw, blocks in [(24, 144, 12, 3), (32, 192, 6, 3), (16, 96, 24, 2)]:
        b = Builder()
        x = _image(b, c, hw)
        for _ in range(blocks):
            y = b.op("Clip", [b.conv(x, c, expanded, 1), b.constant(()), b.constant((), 6.0)])
            y = b.op("Clip", [b.conv(y, expanded, expanded, 3, 1, group=expanded), b.constant(()), b.constant((), 6.0)])
            x = b.op("Add", [b.conv(y, expanded, c, 1), x])
        yield f"chain_inverted_residual_{c}x{expanded}_{hw}x{blocks}", b.model(x)
    b = Builder()
    x = _image(b, 32, 7)
    for _ in range(4):
        x = b.conv(x, 32, 32, 1)
    yield "chain_pw_x4_7", b.model(x)
    # Chains, so that layout reorders (paid once per chain, not per conv) can be told apart.
    for name, layers, c, hw in [
        ("pw_pw", [(32, 192, 1, 1), (192, 32, 1, 1)], 32, 28),
        ("dw_pw", [(144, 144, 3, 144), (144, 24, 1, 1)], 144, 56),
        ("pw_dw_pw", [(24, 144, 1, 1), (144, 144, 3, 144), (144, 24, 1, 1)], 24, 28),
        ("k3_k3", [(64, 64, 3, 1), (64, 64, 3, 1)], 64, 14),
        ("pw_dw_pw_wide", [(96, 576, 1, 1), (576, 576, 3, 576), (576, 96, 1, 1)], 96, 14),
    ]:
        b = Builder()
        x = _image(b, c, hw)
        for cin, cout, k, group in layers:
            x = b.op("Relu", [b.conv(x, cin, cout, k, 1, group)])
        yield f"chain_{name}_{hw}", b.model(x)
    b = Builder()
    x = _image(b, 64, 28)
    residual = b.op("Relu", [b.conv(x, 64, 64, 3)])
    yield "chain_residual_add_28", b.model(b.op("Relu", [b.op("Add", [b.conv(residual, 64, 64, 3), x])]))
    # Transposed convolutions (upsampling heads), narrowing and widening too: its work is not its input's size.
    for cin, cout, hw, k in [
        (64, 64, 20, 2),
        (32, 32, 40, 2),
        (16, 16, 80, 2),
        (24, 24, 40, 4),
        (24, 1, 160, 2),
        (24, 1, 80, 2),
        (96, 24, 40, 2),
        (16, 64, 40, 2),
    ]:
        b = Builder()
        weight = b.constant((cin, cout, k, k))
        pads = [k // 2 - 1] * 4 if k > 2 else [0] * 4
        yield (
            f"convtranspose_{cin}x{cout}_k{k}_{hw}",
            b.model(
                b.op("ConvTranspose", [_image(b, cin, hw), weight], kernel_shape=[k, k], strides=[2, 2], pads=pads)
            ),
        )
    # Dense layers.
    for k, n in [(1280, 1000), (512, 1000), (1024, 256), (2048, 1000), (576, 128)]:
        b = Builder()
        yield f"gemm_{k}x{n}", b.model(b.op("Gemm", [b.input((1, k)), b.constant((n, k)), b.constant((n,))], transB=1))
    # Pools.
    for op_type, c, hw, k, stride in [
        ("MaxPool", 64, 112, 3, 2),
        ("MaxPool", 64, 56, 3, 2),
        ("MaxPool", 32, 28, 2, 2),
        ("AveragePool", 64, 28, 2, 2),
        ("AveragePool", 96, 56, 3, 1),
    ]:
        b = Builder()
        yield (
            f"{op_type.lower()}_{c}_k{k}s{stride}_{hw}",
            b.model(
                b.op(
                    op_type,
                    [_image(b, c, hw)],
                    kernel_shape=[k, k],
                    strides=[stride, stride],
                    pads=[k // 2] * 4 if k == 3 else [0] * 4,
                )
            ),
        )
    for c, hw in [(1280, 7), (512, 7), (96, 56), (192, 20), (24, 80), (576, 14)]:
        b = Builder()
        yield f"globalaveragepool_{c}_{hw}", b.model(b.op("GlobalAveragePool", [_image(b, c, hw)]))
    # Elementwise, on plain tensors from small to large, mostly as chains of ELEMENTWISE_CHAIN ops:
    # a run after an idle gap pays a cold start per kind of kernel (its code, its tables) that a
    # network with dozens of them pays once. Chains and lone ops tell the two costs apart.
    sizes = [(16, 112, ELEMENTWISE_CHAIN), (64, 56, ELEMENTWISE_CHAIN), (128, 28, ELEMENTWISE_CHAIN), (256, 7, ELEMENTWISE_CHAIN),
             (48, 160, ELEMENTWISE_CHAIN), (64, 56, 1), (256, 7, 1)]  # fmt: skip
    for op_type, attributes in [
        ("Relu", {}),
        ("Clip", {}),
        ("Sigmoid", {}),
        ("HardSigmoid", {"alpha": 0.2, "beta": 0.5}),
        ("Tanh", {}),
        ("LeakyRelu", {}),
        ("HardSwish", {}),
    ]:
        for c, hw, length in sizes:
            b = Builder()
            x = _image(b, c, hw)
            for _ in range(length):
                x = b.op(op_type, [x, b.constant(()), b.constant((), 6.0)] if op_type == "Clip" else [x], **attributes)
            yield f"{op_type.lower()}_{c}_{hw}x{length}", b.model(x)
    for op_type in ("Add", "Mul", "Sub", "Div"):
        for kind, c, hw, length in [
            ("same", 32, 56, ELEMENTWISE_CHAIN), ("same", 96, 28, ELEMENTWISE_CHAIN), ("same", 192, 14, ELEMENTWISE_CHAIN),
            ("same", 16, 160, ELEMENTWISE_CHAIN), ("channel", 96, 28, ELEMENTWISE_CHAIN), ("channel", 24, 80, ELEMENTWISE_CHAIN),
            ("scalar", 96, 28, ELEMENTWISE_CHAIN), ("scalar", 32, 80, ELEMENTWISE_CHAIN), ("same", 96, 28, 1), ("scalar", 32, 80, 1),
        ]:  # fmt: skip
            b = Builder()
            x = _image(b, c, hw)
            other = {
                "same": lambda: b.input((1, c, hw, hw)),
                "channel": lambda: b.input((1, c, 1, 1)),
                "scalar": lambda: b.constant((1,), 3.0),
            }[kind]()
            for _ in range(length):
                x = b.op(op_type, [x, other])
            yield f"{op_type.lower()}_{kind}_{c}_{hw}x{length}", b.model(x)
    for c, hw in [(64, 56), (96, 80)]:
        b = Builder()
        params = [b.constant((c,), v) for v in (1.0, 0.0, 0.0, 1.0)]
        yield f"batchnormalization_{c}_{hw}", b.model(b.op("BatchNormalization", [_image(b, c, hw), *params]))
    for parts, c, hw in [(2, 32, 56), (2, 64, 28), (4, 24, 80)]:
        b = Builder()
        yield f"concat_{parts}x{c}_{hw}", b.model(b.op("Concat", [_image(b, c, hw) for _ in range(parts)], axis=1))
    for c, hw, mode in [
        (96, 20, "nearest"),
        (96, 40, "nearest"),
        (24, 80, "nearest"),
        (96, 10, "nearest"),
        (32, 40, "linear"),
        (96, 20, "linear"),
    ]:
        b = Builder()
        b.initializers.append(numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"))
        yield f"resize_{mode}_{c}_{hw}", b.model(b.op("Resize", [_image(b, c, hw), "", "scales"], mode=mode))
    for c, hw in [(64, 28), (32, 56)]:
        b = Builder()
        yield f"transpose_{c}_{hw}", b.model(b.op("Transpose", [_image(b, c, hw)], perm=[0, 2, 3, 1]))
    for n in (1000, 10000):
        b = Builder()
        yield f"softmax_{n}", b.model(b.op("Softmax", [b.input((1, n))], axis=-1))
    b = Builder()
    yield "flatten_1280", b.model(b.op("Flatten", [_image(b, 1280, 1)]))


def kernel_features(model: onnx.ModelProto) -> dict[str, dict[str, list[float]]]:
    """Block size → kernel class → summed features, of the kernels onnxruntime runs for the model."""
    graph = graph_from_onnx(model)
    result: dict[str, dict[str, list[float]]] = {}
    for block in NCHWC_BLOCKS:
        sums: dict[str, list[float]] = collections.defaultdict(lambda: [0.0] * len(FEATURES))
        for kernel in kernels(graph, graph.ops, graph.outputs, block):
            sums[kernel.op_class] = [a + b for a, b in zip(sums[kernel.op_class], kernel.features)]
        result[str(block)] = dict(sums)
    return result


def build() -> tuple[dict, dict[str, bytes]]:
    """The manifest and the files, by name."""
    entries, files = [], {}
    for name, model in benchmarks():
        data = model.SerializeToString()
        files[f"{name}.onnx"] = data
        inputs = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
        graph = graph_from_onnx(model)
        output_bytes = sum(graph.tensors[name].nbytes for name in graph.outputs)
        entries.append(
            {
                "name": name,
                "file": f"{name}.onnx",
                "inputs": inputs,
                "output_bytes": output_bytes,
                "features": kernel_features(model),
            }
        )
    digest = hashlib.sha256(b"".join(files[e["file"]] for e in entries)).hexdigest()[:16]
    return suite_manifest(f"splitinfer-calibration-{digest}", entries), files


def write(directory: Path = SUITE_DIR) -> Path:
    manifest, files = build()
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.onnx"):
        if old.name not in files:
            old.unlink()
    for name, data in files.items():
        (directory / name).write_bytes(data)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    return directory


if __name__ == "__main__":
    out = write()
    print(f"wrote {len(list(out.glob('*.onnx')))} models and {MANIFEST_FILE} to {out}")
