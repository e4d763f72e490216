"""What an adaptive device needs from the profile, computed offline: which cuts to carry, and a
compact cost table to choose among them at run time without the profile, torch or the splitter.

`adaptive_decisions`: of every (cut, codec) the constraints admit (the accuracy budget by the
profile's measured agreement per cut and codec, the raw input, the head's depth and memory), the
ones predicted the fastest somewhere in the planned rate range [lo, hi] at the planning RTT (the
lower envelope of splitter.cost.envelope, exact: no choice that wins between two grid points is
lost), and the all-on-device run (what the device answers with when the server cannot, and the
device's side of a race). Each row holds the network-independent parts of the CostModel's
prediction (protos.decisions: device head and encode times already scaled to the target device,
bytes, server decode and tail times), which `edge_runtime.adaptive` combines with its own
bandwidth and RTT estimates by the same formula; the envelope's switching points are kept beside
them, for people reading the bundle. The bundle carries the cuts of those rows (`carried_cuts`).
`export_adaptive` puts it together: a profile → the multi-cut bundle (splitter.export.bundle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from protos.codec import Codec
from protos.decisions import Choice, DecisionTable
from protos.errors import SplitInferError
from splitter.cost.cut_cost import cut_cost, monotone_times
from splitter.cost.envelope import lower_envelope
from splitter.cost.network import NetworkModel
from splitter.policies import Constraints
from splitter.profile.schema import Profile

# The range of uplinks a device may meet: below a CAT1 link to above a fast Wi-Fi.
DEFAULT_LO_BPS = 5e4
DEFAULT_HI_BPS = 2e8


def admitted_choices(profile: Profile, codecs: Sequence[str], constraints: Constraints = Constraints()) -> list[Choice]:
    """Every (cut, codec) of `profile` the constraints admit (one row for all on the device), in
    the profile's order. A deadline is not applied: it depends on the rate, and the fastest choice
    at a rate is the one that meets it there if any does."""
    codecs = [Codec.parse(c).name for c in codecs]
    rules = dataclasses.replace(constraints, deadline_ms=None)
    # Any bandwidth: only the parts that do not depend on it are kept.
    anywhere = NetworkModel(1e6, 0.0)
    times = monotone_times(profile)
    found = []
    for cut in profile.cuts:
        for codec in codecs[:1] if cut.is_edge_only else codecs:
            if not cut.is_edge_only and codec not in cut.codecs:
                continue
            cost = cut_cost(profile, cut, anywhere, codec, times=times)
            if rules.allows(cost):
                found.append(cost.choice())
    return found


def adaptive_decisions(
    profile: Profile,
    rtt_ms: float,
    codecs: Sequence[str],
    *,
    constraints: Constraints = Constraints(),
    lo_bps: float = DEFAULT_LO_BPS,
    hi_bps: float = DEFAULT_HI_BPS,
) -> DecisionTable:
    """The bundle's decision table for uplinks in [lo_bps, hi_bps] at `rtt_ms` (see the module)."""
    admitted = admitted_choices(profile, codecs, constraints)
    if not admitted:
        raise SplitInferError(f"no cut of {profile.model_id!r} satisfies the constraints ({constraints})")
    segments = lower_envelope(admitted, rtt_ms, lo_bps, hi_bps)
    keep = {s.choice.key for s in segments} | {c.key for c in admitted if c.edge_only}
    choices = tuple(c for c in admitted if c.key in keep)
    switching = {
        ", ".join(Codec.parse(c).name for c in codecs): [
            [s.lo_bps, s.hi_bps, s.choice.cut, s.choice.codec] for s in segments
        ]
    }
    return DecisionTable(
        choices, rtt_ms, profile.model_id, profile.edge_slowdown, profile.machine.get("processor", ""), switching
    )


def carried_cuts(table: DecisionTable) -> list[str]:
    """The cuts a bundle with this decision table carries, in the table's (head-size) order."""
    return list(dict.fromkeys(c.cut for c in table.choices))


def export_adaptive(
    spec: str,
    out: str | Path,
    profile: Profile,
    *,
    rtt_ms: float,
    codecs: Sequence[str],
    constraints: Constraints = Constraints(),
    lo_bps: float = DEFAULT_LO_BPS,
    hi_bps: float = DEFAULT_HI_BPS,
    input_shape: tuple[int, ...] | None = None,
    samples: int = 4,
    min_agreement: float = 1.0,
    max_error: float | None = None,
    samples_path: Path | None = None,
    metric: str | None = None,
    preprocess: str | None = None,
):
    """The multi-cut bundle of model `spec`: the (cut, codec) choices of `profile` that are the
    fastest somewhere in [lo_bps, hi_bps] at `rtt_ms` with `codecs` (`adaptive_decisions`), their
    decision table, verified. With a task metric (the model's own, or `metric`), only the (cut,
    codec) pairs the accuracy budget admits by the profile's agreement are carried, and each is
    verified by the same rule on the same samples (splitter.export.bundle); without one, on
    `samples` default inputs by top-1 share. Returns (bundle, verifications)."""
    from splitter.accuracy.evaluate import evaluation_for
    from splitter.cost.plan import accuracy_constraints
    from splitter.export.bundle import export_multi_cut
    from splitter.graph.cuts import find_cut
    from splitter.pipeline import check_same_samples, model_cuts
    from splitter.sources import load_source

    source = load_source(spec, input_shape=input_shape, preprocess=preprocess)
    if profile.model_id != source.model_id:
        raise SplitInferError(f"profile is of model {profile.model_id!r}, not {source.model_id!r}")
    evaluation = evaluation_for(source, samples_path, metric)
    check_same_samples(profile, evaluation)
    constraints = accuracy_constraints(profile, constraints, max_error)
    codecs = [Codec.parse(c).name for c in codecs]
    decisions = adaptive_decisions(profile, rtt_ms, codecs, constraints=constraints, lo_bps=lo_bps, hi_bps=hi_bps)
    names = carried_cuts(decisions)
    cuts = [find_cut(model_cuts(source, include_input=True), n) for n in names]
    if evaluation is None:
        return export_multi_cut(source, cuts, out, source.samples(samples), decisions, min_agreement=min_agreement)
    return export_multi_cut(
        source,
        cuts,
        out,
        evaluation.named(),
        decisions,
        metric=evaluation.metric,
        max_error=max_error,
        samples_record=evaluation.samples.record(),
    )
