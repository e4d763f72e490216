"""Cut candidates: the places a Graph can be split, each with the set of tensors that crosses.

A cut puts a prefix of the topological order on the device (the head) and the rest on the server
(the tail). The tensors that cross are those made in the head and used in the tail (or returned
as model outputs). Inside a residual block that is more than one tensor: the skip input and the
branch's intermediate both cross. Prefixes of one topological order do not list every cut a
branching DAG allows (two parallel branches cut at different depths); the min-cut partitioner
searches those.

A cut need not be a prefix: the min-cut partitioner (splitter.policies.mincut_solver) may put any set of ops on
the device that is closed under "every producer of a device op's input is on the device" (data
flows one way, device to server); `cut_from_device_ops` turns such a set into a Cut, checking it.

Two cuts are special: `input` (everything on the server: the raw input crosses) exists only when
asked for, because by default at least one layer runs on the device (the raw input stays private);
`output` (everything on the device) is always listed as the all-edge baseline. A head made only of
ops that move or rescale the input's values (a Pad, a Reshape, a normalisation: `RAW_MOVES`) sends
the raw input as surely as the `input` cut does, so it is left out with it unless asked for
(EfficientNet-Lite0's `_conv_stem/Pad` is its image, zero-padded).
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.errors import SplitInferError
from splitter.graph.graph import Graph, Op

INPUT_CUT = "input"
OUTPUT_CUT = "output"
# Ops whose outputs are their input's values moved, padded, retyped or rescaled by constants (a
# normalisation, (x − mean) / std, is the image as surely as the image is): a head of only these
# still sends the raw input.
RAW_MOVES = frozenset(
    {"Pad", "Reshape", "Transpose", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Cast", "Expand", "Concat"}
    | {"Sub", "Add", "Mul", "Div", "Neg"}
)


@dataclass(frozen=True)
class Cut:
    name: str
    # Number of ops on the device: ops[:head_size] of the graph, unless head_ops names them.
    head_size: int
    tensors: tuple[str, ...]
    # The device's ops by name when they are not a prefix of the graph's order (parallel branches
    # cut at different depths); empty for a prefix cut.
    head_ops: tuple[str, ...] = ()

    @property
    def is_prefix(self) -> bool:
        return not self.head_ops

    @property
    def is_cloud_only(self) -> bool:
        return self.name == INPUT_CUT

    @property
    def is_edge_only(self) -> bool:
        return self.name == OUTPUT_CUT


def module_path(op_name: str) -> str:
    """`/features/features.3/conv/conv.0/conv.0.2/Clip` → `features.3.conv.0.2/Clip`.

    The TorchScript exporter writes each scope level with its full attribute path under the parent
    (`conv.0` inside `conv`), so a level that extends the previous one replaces it."""
    *scopes, op = op_name.strip("/").split("/")
    parts: list[str] = []
    for scope in scopes:
        if parts and scope.startswith(parts[-1] + "."):
            parts[-1] = scope
        else:
            parts.append(scope)
    path = ".".join(parts)
    return f"{path}/{op}" if path else op


def enumerate_cuts(graph: Graph, *, include_input: bool = False) -> list[Cut]:
    """Every prefix cut of the graph's op order, without duplicates, in head-size order; the raw
    input's cuts (`input`, and heads of RAW_MOVES alone) only with `include_input`."""
    producer = {name: -1 for name in graph.inputs}
    last_use: dict[str, int] = {}
    for position, op in enumerate(graph.ops):
        for name in op.outputs:
            producer[name] = position
        for name in op.inputs:
            last_use[name] = position
    end = len(graph.ops)
    for name in graph.outputs:
        last_use[name] = end

    cuts: list[Cut] = []
    seen: set[tuple[str, ...]] = set()
    # A mid-graph op may itself be called `input` or `output`; its cut must not take those names.
    names: dict[str, int] = {INPUT_CUT: 1, OUTPUT_CUT: 1}
    raw = raw_input_tensors(graph)
    for head_size in range(0 if include_input else 1, end + 1):
        crossing = tuple(
            name for name, made in producer.items() if made < head_size and last_use.get(name, -1) >= head_size
        )
        if not crossing or crossing in seen:
            continue
        if not include_input and head_size < end and any(name in raw for name in crossing):
            continue
        seen.add(crossing)
        if head_size == 0:
            name = INPUT_CUT
        elif head_size == end:
            name = OUTPUT_CUT
        else:
            name = module_path(graph.ops[head_size - 1].name)
            names[name] = names.get(name, 0) + 1
            if names[name] > 1:
                name = f"{name}#{names[name]}"
        cuts.append(Cut(name, head_size, crossing))
    return cuts


def raw_input_tensors(graph: Graph) -> frozenset[str]:
    """The model's inputs and every tensor made from them by RAW_MOVES alone: sending any of them
    sends the raw input."""
    raw = set(graph.inputs)
    for op in graph.ops:
        if op.op_type in RAW_MOVES and op.inputs and all(name in raw for name in op.inputs):
            raw.update(op.outputs)
    return frozenset(raw)


def spread_cuts(cuts: list[Cut], count: int) -> list[Cut]:
    """At most `count` of `cuts` evenly spread by head size, plus the baselines (all on the server,
    all on the device) when present, in the order given: a large model (hundreds of ops) would
    take hours to profile cut by cut; the plan then chooses among these."""
    baselines = [c for c in cuts if c.is_cloud_only or c.is_edge_only]
    split = [c for c in cuts if not (c.is_cloud_only or c.is_edge_only)]
    if count < 1:
        raise SplitInferError(f"at most {count} cuts: at least 1 is needed")
    if len(split) <= count:
        return list(cuts)
    sizes = sorted({c.head_size for c in split})
    # The cut nearest each of `count` head sizes evenly spaced from the smallest to the largest.
    low, high = sizes[0], sizes[-1]
    targets = [low + (high - low) * i / (count - 1) for i in range(count)] if count > 1 else [(low + high) / 2]
    chosen: set[str] = set()
    for target in targets:
        best = min((c for c in split if c.name not in chosen), key=lambda c: (abs(c.head_size - target), c.head_size))
        chosen.add(best.name)
    return [c for c in cuts if c.name in chosen or c in baselines]


def find_cut(cuts: list[Cut], name: str) -> Cut:
    """The cut of that name; or, for a module path like `features.7`, the last cut inside it."""
    for cut in cuts:
        if cut.name == name:
            return cut
    inside = [c for c in cuts if c.name.split("/")[0] == name or c.name.startswith(name + ".")]
    if inside:
        return inside[-1]
    sample = ", ".join(c.name for c in cuts[:6])
    raise SplitInferError(f"no cut named {name!r}; {len(cuts)} cuts, e.g. {sample} (see `splitinfer plan`)")


def device_ops(graph: Graph, cut: Cut) -> list[Op]:
    """The ops the cut puts on the device, in the graph's order."""
    if cut.is_prefix:
        return list(graph.ops[: cut.head_size])
    names = set(cut.head_ops)
    return [op for op in graph.ops if op.name in names]


def crossing_tensors(graph: Graph, device: set[str]) -> tuple[str, ...]:
    """Tensors made on the device (or model inputs) that a server op or the model's output needs,
    in the order enumerate_cuts lists them; none when every op is on the device."""
    if len(device) == len(graph.ops):
        return tuple(graph.outputs)
    made_on_device = set(graph.inputs)
    needed_by_server = {name for name in graph.outputs}
    for op in graph.ops:
        if op.name in device:
            made_on_device.update(op.outputs)
        else:
            needed_by_server.update(op.inputs)
    order = [*graph.inputs, *(name for op in graph.ops if op.name in device for name in op.outputs)]
    return tuple(name for name in order if name in needed_by_server and name in made_on_device)


def cut_from_device_ops(
    graph: Graph, device: set[str] | frozenset[str], *, prefix_cuts: list[Cut] | None = None
) -> Cut:
    """The Cut that runs exactly `device` on the device.

    SplitInferError when the set is not closed (a device op would need a tensor the server makes)
    or names an op the graph lacks. A set that is a prefix of the graph's order becomes that prefix
    cut, with its name; any other is named after the producers of its tensors, joined by `+`."""
    names = {op.name for op in graph.ops}
    unknown = sorted(set(device) - names)
    if unknown:
        raise SplitInferError(f"the graph has no op {unknown[0]!r} (given for the device side)")
    producer = {name: op for op in graph.ops for name in op.outputs}
    for op in graph.ops:
        if op.name in device:
            for name in op.inputs:
                if name in producer and producer[name].name not in device:
                    raise SplitInferError(
                        f"op {op.name!r} cannot run on the device: its input {name!r} is made by "
                        f"{producer[name].name!r} on the server (data only flows from device to server)"
                    )
    size = len(device)
    if {op.name for op in graph.ops[:size]} == set(device):
        cuts = prefix_cuts if prefix_cuts is not None else enumerate_cuts(graph, include_input=True)
        tensors = crossing_tensors(graph, set(device)) if size else tuple(graph.inputs)
        # Prefixes with the same crossing tensors are one cut (enumerate_cuts keeps the first).
        for cut in cuts:
            if cut.tensors == tensors:
                return cut
        if size == 0:
            return Cut(INPUT_CUT, 0, tensors)
        if size == len(graph.ops):
            return Cut(OUTPUT_CUT, size, tensors)
        return Cut(module_path(graph.ops[size - 1].name), size, tensors)
    tensors = crossing_tensors(graph, set(device))
    made_by = {name: module_path(op.name) for op in graph.ops for name in op.outputs}
    name = "+".join(made_by.get(t, t) for t in tensors)
    return Cut(name, size, tensors, head_ops=tuple(op.name for op in graph.ops if op.name in device))
