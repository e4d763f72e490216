"""Cut candidates: the places a Graph can be split, each with the set of tensors that crosses.

A cut puts a prefix of the topological order on the device (the head) and the rest on the server
(the tail). The tensors that cross are those made in the head and used in the tail (or returned
as model outputs). Inside a residual block that is more than one tensor: the skip input and the
branch's intermediate both cross. Prefixes of one topological order do not list every cut a
branching DAG allows (two parallel branches cut at different depths); the min-cut partitioner
searches those.

Two cuts are special: `input` (everything on the server: the raw input crosses) exists only when
asked for, because by default at least one layer runs on the device (the raw input stays private);
`output` (everything on the device) is always listed as the all-edge baseline.
"""

from __future__ import annotations

from dataclasses import dataclass

from protos.errors import SplitInferError
from splitter.graph import Graph

INPUT_CUT = "input"
OUTPUT_CUT = "output"


@dataclass(frozen=True)
class Cut:
    name: str
    # Number of ops on the device: ops[:head_size] of the graph.
    head_size: int
    tensors: tuple[str, ...]

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
    """Every prefix cut of the graph's op order, without duplicates, in head-size order."""
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
    for head_size in range(0 if include_input else 1, end + 1):
        crossing = tuple(
            name for name, made in producer.items() if made < head_size and last_use.get(name, -1) >= head_size
        )
        if not crossing or crossing in seen:
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
