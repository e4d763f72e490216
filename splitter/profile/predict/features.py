"""What onnxruntime runs for a set of ops, and the features that price each kernel: the input of the
latency regressions of a DeviceProfile (Neurosurgeon-style: one linear model per kind of kernel).

onnxruntime does not run the ONNX graph as written (probed on its CPU provider, 1.32, opset 17):
- after a Conv whose output nothing else reads, a BatchNormalization or an Add/Mul by a per-channel
  constant ((C,1,1)-shaped; not a scalar) is folded into its weights, and then an activation (Relu,
  Clip, Sigmoid, HardSigmoid, Tanh, LeakyRelu) is fused into it: all free;
- an Add of a Conv's output (read by nothing else, no activation fused yet) and another tensor of
  its shape is fused into the Conv as its sum input (the residual add), and an activation after it too;
- with NCHWc blocking (x86: block 8 with AVX2, 16 with AVX-512; none on ARM) every 2-D Conv but a
  grouped, non-depthwise one runs in a blocked layout, its channels padded up to the block, as do
  pools, and activations and same-shape Add/Mul/Concat whose inputs are blocked; a *reorder*
  kernel converts at every boundary with the plain layout: before a blocked op that reads a plain
  tensor (a Conv with fewer input channels than a block reads plain input itself), after a blocked
  op whose tensor a plain op or the caller reads. A head cut inside a blocked region pays a reorder
  to return its tensors, the tail another to take them.
A fused activation still makes one more pass over the Conv's output, and a fused sum reads one
more tensor: each is its own kernel kind (`conv_activation`, `conv_sum`) charged to the Conv, so
the suite's Convs with and without them tell the parts apart.

So the kernels depend on the subgraph a session holds (fusions across a cut are lost) and on the
device's block size; `kernels()` takes both. Each kernel is charged to a graph op (a fused op's to
the op it was fused into, a reorder to the op it serves), as splitter.profile.ops charges measured
kernels.

Features are summed per kernel: `one` (the kernel's fixed cost), `macs`, `in_bytes`, `out_bytes`,
`weight_bytes`. The same code computes the features of the calibration suite's micro-benchmarks
(splitter.profile.predict.suite) and of any model's ops, so what the device fitted is what is predicted.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from splitter.graph.graph import Graph, Op

# Block sizes the calibration suite's features are computed for (0: no blocked layout).
NCHWC_BLOCKS = (0, 8, 16)
# Channel counts the NCHWc transformer accepts are multiples of this (then padded to the block).
_CHANNEL_ALIGNMENT = 4

ACTIVATIONS = {"Relu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "LeakyRelu"}
_UNARY = ACTIVATIONS | {"HardSwish", "Exp", "Sqrt", "Neg", "Abs", "Erf", "Softplus", "Elu", "Selu", "Cast", "Dropout"}
_BINARY = {"Add", "Mul", "Sub", "Div", "Sum", "Pow", "Max", "Min"}
_POOLS = {"MaxPool", "AveragePool"}
_GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax", "ReduceSum"}
_VIEWS = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
# Kinds of kernel with a regression of their own; anything else is priced by `other`.
CLASSES = (
    "conv", "conv_nchwc", "conv_pw", "conv_pw_nchwc", "conv_dw", "conv_dw_nchwc", "conv_group", "conv_group_nchwc", "conv_transpose",
    "conv_activation", "conv_sum", "gemm", "pool", "pool_nchwc", "global_pool", "reorder", "view",
    "Relu", "Clip", "Sigmoid", "HardSigmoid", "Tanh", "LeakyRelu", "HardSwish",
    "Add", "Mul", "Sub", "Div", "Concat", "Resize", "Resize_linear", "Transpose", "BatchNormalization", "Softmax",
    "other",
)  # fmt: skip


@dataclass(frozen=True)
class Kernel:
    """One kernel onnxruntime runs, charged to graph op `op`, with its regression kind and features."""

    op: str
    op_class: str
    features: tuple[float, ...]  # in FEATURES order


def _nbytes(graph: Graph, name: str) -> int:
    info = graph.tensors.get(name) or graph.static_tensors.get(name)
    if info is None or any(d < 0 for d in info.shape):
        return 0
    return info.nbytes


def _shape(graph: Graph, name: str) -> tuple[int, ...]:
    info = graph.tensors.get(name) or graph.static_tensors.get(name)
    return info.shape if info is not None else ()


def _elements(graph: Graph, name: str) -> int:
    shape = _shape(graph, name)
    return math.prod(shape) if shape and all(d >= 0 for d in shape) else 0


def _conv_geometry(graph: Graph, op: Op) -> tuple[int, int, int, tuple[int, ...]]:
    """(input channels, output channels, group, kernel shape) of a Conv."""
    weight = _shape(graph, op.node_inputs[1]) if len(op.node_inputs) > 1 else ()
    group = int(op.attributes.get("group", 1))
    kernel = tuple(op.attributes.get("kernel_shape", weight[2:] if len(weight) > 2 else ()))
    cout = weight[0] if weight else 0
    cin = weight[1] * group if len(weight) > 1 else 0
    return cin, cout, group, kernel


def conv_kind(graph: Graph, op: Op) -> str:
    cin, cout, group, kernel = _conv_geometry(graph, op)
    if group > 1:
        return "conv_dw" if group == cin == cout else "conv_group"
    return "conv_pw" if all(k == 1 for k in kernel) else "conv"


def _conv_blocked(graph: Graph, op: Op, block: int) -> bool:
    """Whether onnxruntime's NCHWc transformer takes this Conv (probed): a 2-D one whose input
    channels are fewer than a block (it reads the plain input) or a multiple of 4 (padded to the
    block); a depthwise one with a multiple of 4 channels; a grouped one whose groups have whole
    blocks of input and output channels."""
    if block <= 1:
        return False
    cin, cout, group, kernel = _conv_geometry(graph, op)
    if len(kernel) != 2:
        return False
    if group == 1:
        return cin < block or cin % _CHANNEL_ALIGNMENT == 0
    if group == cin == cout:
        return cin % _CHANNEL_ALIGNMENT == 0
    return (cin // group) % block == 0 and (cout // group) % block == 0


def _reads_plain(graph: Graph, op: Op, block: int) -> bool:
    """A blocked plain Conv with fewer input channels than a block reads the plain layout itself."""
    if op.op_type != "Conv":
        return False
    cin, _, group, _ = _conv_geometry(graph, op)
    return group == 1 and cin < block


def _runs_blocked(graph: Graph, op: Op, block: int, blocked: set[str], producer: dict[str, Op]) -> bool:
    """Whether an op that was not fused runs in the blocked layout, given the tensors that are."""
    shape = _shape(graph, op.inputs[0]) if op.inputs else ()
    channels = shape[1] if len(shape) == 4 else 0
    all_blocked = bool(op.inputs) and all(i in blocked for i in op.inputs)
    if op.op_type == "Conv":
        return _conv_blocked(graph, op, block)
    # A pool runs blocked only over whole blocks of channels (onnxruntime's NCHWc transformer skips
    # the others: 24 channels are blocked with AVX2's 8, not with AVX-512's 16).
    pools_blocked = channels > 0 and channels % block == 0
    if op.op_type in _POOLS:
        return pools_blocked
    if op.op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        # Reordered into the blocked layout from a session input, but not from a plain op's output (probed).
        return pools_blocked and (all_blocked or op.inputs[0] not in producer)
    if op.op_type in ACTIVATIONS:
        return all_blocked
    if op.op_type in ("Add", "Sum", "Mul") and len(op.node_inputs) == len(op.inputs) >= 2:
        return all_blocked and len({_shape(graph, i) for i in op.inputs}) == 1
    if op.op_type == "Concat":
        return all_blocked and all(len(_shape(graph, i)) == 4 and _shape(graph, i)[1] % block == 0 for i in op.inputs)
    return False


def _padded(channels: int, block: int) -> int:
    return -(-channels // block) * block if block > 1 else channels


def _per_channel_constant(graph: Graph, op: Op) -> bool:
    """An Add or Mul of one activation and a (C,1,1)-shaped constant: foldable into a Conv."""
    constants = [name for name in op.node_inputs if name not in op.inputs]
    return len(op.inputs) == 1 and len(constants) == 1 and len(_shape(graph, constants[0])) >= 3


def _features(graph: Graph, op: Op, block: int = 0) -> tuple[float, ...]:
    """Features of an op's kernel; a blocked Conv computes and moves its channels padded to the block."""
    in_bytes = sum(_nbytes(graph, name) for name in op.inputs)
    out_bytes = sum(_nbytes(graph, name) for name in op.outputs)
    # Weights by their shapes, whether initializers or computed from constants.
    weight_bytes = sum(_nbytes(graph, name) for name in op.node_inputs if name and name not in op.inputs)
    out_elements = sum(_elements(graph, name) for name in op.outputs)
    macs = out_elements
    if op.op_type == "Conv":
        cin, cout, group, kernel = _conv_geometry(graph, op)
        if block > 1 and cout:
            padded_in = cin if cin < block else _padded(cin, block)
            in_bytes = in_bytes * padded_in // max(cin, 1)
            out_bytes = out_bytes * _padded(cout, block) // cout
            out_elements = out_elements * _padded(cout, block) // cout
            cin = padded_in
        macs = out_elements * (cin // max(group, 1)) * math.prod(kernel)
    elif op.op_type == "ConvTranspose":
        cin, _, group, kernel = _conv_geometry(graph, op)
        weight = _shape(graph, op.node_inputs[1])
        cout_per_group = weight[1] if len(weight) > 1 else 0
        macs = sum(_elements(graph, name) for name in op.inputs[:1]) * cout_per_group * math.prod(kernel)
    elif op.op_type in ("Gemm", "MatMul"):
        a = _shape(graph, op.node_inputs[0])
        k = a[-1] if a else 0
        if op.op_type == "Gemm" and int(op.attributes.get("transA", 0)):
            k = a[0] if a else 0
        macs = out_elements * k
    elif op.op_type in _POOLS:
        macs = out_elements * math.prod(op.attributes.get("kernel_shape", (1,)))
    elif op.op_type in _GLOBAL_POOLS:
        macs = sum(_elements(graph, name) for name in op.inputs)
    return (1.0, float(macs), float(in_bytes), float(out_bytes), float(weight_bytes))


def op_class(graph: Graph, op: Op, blocked: bool = False) -> str:
    kind = op.op_type
    if kind == "Conv":
        base = conv_kind(graph, op)
        return f"{base}_nchwc" if blocked else base
    if kind == "ConvTranspose":
        return "conv_transpose"
    if kind in ("Gemm", "MatMul"):
        return "gemm"
    if kind in _POOLS:
        return "pool_nchwc" if blocked else "pool"
    if kind in _GLOBAL_POOLS:
        return "global_pool"
    if kind in _VIEWS:
        return "view"
    if kind in ("Resize", "Upsample"):
        # Interpolating costs several times what repeating the nearest pixel does.
        return "Resize" if op.attributes.get("mode", "nearest") == "nearest" else "Resize_linear"
    return kind if kind in CLASSES else "other"


@dataclass(frozen=True)
class _Session:
    """The ops one onnxruntime session holds, in graph order, and who makes and reads each tensor."""

    ops: Sequence[Op]
    exposed: frozenset[str]
    by_name: dict[str, Op]
    producer: dict[str, Op]
    consumers: dict[str, list[Op]]

    @classmethod
    def of(cls, ops: Sequence[Op], session_outputs: Collection[str]) -> _Session:
        consumers: dict[str, list[Op]] = {}
        for op in ops:
            for name in op.inputs:
                consumers.setdefault(name, []).append(op)
        producer = {t: op for op in ops for t in op.outputs}
        return cls(ops, frozenset(session_outputs), {op.name: op for op in ops}, producer, consumers)

    def private(self, tensor: str) -> bool:
        """Read by exactly one op of this session, and not returned: free to fuse away."""
        return tensor not in self.exposed and len(self.consumers.get(tensor, [])) == 1


@dataclass
class _Fusion:
    """What the fusion pass decided: the Conv each fused op went into (`anchor`), the Convs that
    took an activation or a residual sum, the kernels those fusions add, and what runs in the
    blocked layout (`blocked_ops`, and the tensors they make, `blocked`)."""

    anchor: dict[str, str] = field(default_factory=dict)
    with_activation: set[str] = field(default_factory=set)
    with_sum: set[str] = field(default_factory=set)
    extra: list[Kernel] = field(default_factory=list)
    blocked_ops: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)

    def fuse(self, op: Op, conv: str) -> None:
        self.anchor[op.name] = conv
        if conv in self.blocked_ops:
            self.block(op)

    def block(self, op: Op) -> None:
        self.blocked_ops.add(op.name)
        self.blocked.update(op.outputs)


def _fuse_into_conv(graph: Graph, session: _Session, fusion: _Fusion, op: Op) -> bool:
    """Folds a BatchNorm or per-channel affine op, or fuses an activation, into the Conv that
    makes its only input; whether it did."""
    source = session.producer.get(op.inputs[0]) if len(op.inputs) == 1 else None
    if source is None or not session.private(op.inputs[0]):
        return False
    base = fusion.anchor.get(source.name, source.name)
    if session.by_name[base].op_type != "Conv" or base in fusion.with_activation:
        return False
    folds = op.op_type == "BatchNormalization" or (op.op_type in ("Add", "Mul") and _per_channel_constant(graph, op))
    if folds and base not in fusion.with_sum:
        fusion.fuse(op, base)
        return True
    if op.op_type in ACTIVATIONS:
        fusion.fuse(op, base)
        fusion.with_activation.add(base)
        fusion.extra.append(Kernel(base, "conv_activation", (1.0, 0.0, 0.0, float(_nbytes(graph, op.outputs[0])), 0.0)))
        return True
    return False


def _fuse_sum(graph: Graph, session: _Session, fusion: _Fusion, op: Op) -> bool:
    """Fuses a residual sum into a blocked Conv that makes one of its inputs, when the other is
    blocked already; whether it did."""
    if op.op_type not in ("Add", "Sum") or not len(op.inputs) == 2 == len(op.node_inputs):
        return False
    if _shape(graph, op.inputs[0]) != _shape(graph, op.inputs[1]):
        return False
    for mine, other in (op.inputs, op.inputs[::-1]):
        conv = session.producer.get(mine)
        if conv is None or conv.op_type != "Conv" or conv.name not in fusion.blocked_ops:
            continue
        if (
            other in fusion.blocked
            and session.private(mine)
            and conv.name not in fusion.with_activation | fusion.with_sum
        ):
            fusion.fuse(op, conv.name)
            fusion.with_sum.add(conv.name)
            fusion.extra.append(Kernel(conv.name, "conv_sum", (1.0, 0.0, float(_nbytes(graph, other)), 0.0, 0.0)))
            return True
    return False


def fusion_pass(graph: Graph, session: _Session, block: int) -> _Fusion:
    """One pass in graph order decides both what fuses into a Conv and what runs in the blocked
    layout: a residual sum fuses only into a blocked Conv, and only with a tensor that is blocked
    already, so the two cannot be decided apart."""
    fusion = _Fusion()
    for op in session.ops:
        if _fuse_into_conv(graph, session, fusion, op) or _fuse_sum(graph, session, fusion, op):
            continue
        if block > 1 and _runs_blocked(graph, op, block, fusion.blocked, session.producer):
            fusion.block(op)
    return fusion


def kernel_pass(graph: Graph, session: _Session, fusion: _Fusion, block: int) -> list[Kernel]:
    """The kernels in run order: each op not fused away, the kernels fusions add, and the layout
    reorders into and out of the blocked layout."""

    def reorder(owner: str, tensor: str) -> Kernel:
        return Kernel(owner, "reorder", (1.0, 0.0, float(_nbytes(graph, tensor)), 0.0, 0.0))

    # A blocked Conv with fewer input channels than a block reads the plain layout.
    plain_readers = {
        op.name for op in session.ops if op.name not in fusion.blocked_ops or _reads_plain(graph, op, block)
    }
    reordered_in: set[str] = set()
    result: list[Kernel] = []
    for op in session.ops:
        owner = fusion.anchor.get(op.name, op.name)
        if op.name not in fusion.anchor:
            in_block = op.name in fusion.blocked_ops
            if in_block and not _reads_plain(graph, op, block):
                # Into the blocked layout, once per tensor however many blocked ops read it.
                for name in op.inputs:
                    if name not in fusion.blocked and name not in reordered_in:
                        reordered_in.add(name)
                        result.append(reorder(owner, name))
            result.append(
                Kernel(op.name, op_class(graph, op, in_block), _features(graph, op, block if in_block else 0))
            )
        result.extend(k for k in fusion.extra if k.op == op.name)
        # Out of it, where a plain op or the caller reads a blocked tensor.
        for name in op.outputs:
            read_plain = name in session.exposed or any(
                r.name in plain_readers for r in session.consumers.get(name, [])
            )
            if name in fusion.blocked and read_plain:
                result.append(reorder(owner, name))
    return result


def kernels(graph: Graph, ops: Sequence[Op], session_outputs: Collection[str], block: int = 0) -> list[Kernel]:
    """The kernels one onnxruntime session holding exactly `ops` (in graph order) runs, when it
    returns `session_outputs`, on a device with NCHWc block size `block`."""
    session = _Session.of(ops, session_outputs)
    return kernel_pass(graph, session, fusion_pass(graph, session, block), block)
