"""What an adaptive device needs from the profile, computed offline: which cuts to carry, and a
compact cost table to choose among them at run time without the profile, torch or the splitter.

`candidate_cuts`: the cuts the policy chooses at some bandwidth of [lo, hi] (the segments of
`splitter.cost.sweep`, for each codec), in head-size order: every other cut is never the best, so a
device never needs it. `decision_table`: per candidate (cut, codec) the network-independent parts
of the CostModel's prediction (protos.decisions: device head and encode times already scaled to
the target device, bytes, server decode and tail times), which `edge_runtime.adaptive` combines
with its own bandwidth and RTT estimates by the same formula. The sweep's switching points at the planning RTT are kept beside it, for people reading the bundle.
`export_adaptive` puts it together: a profile → the multi-cut bundle (splitter.export.bundle).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from protos.codec import Codec
from protos.decisions import DecisionTable
from protos.errors import SplitInferError
from splitter.cost.cut_cost import cut_cost, monotone_times
from splitter.cost.network import NetworkModel
from splitter.cost.sweep import NO_CUT, sweep_bandwidth
from splitter.policies import Constraints
from splitter.profile.schema import Profile

# The range of uplinks a device may meet: below a CAT1 link to above a fast Wi-Fi.
DEFAULT_LO_BPS = 5e4
DEFAULT_HI_BPS = 2e8


def candidate_cuts(
    profile: Profile,
    rtt_ms: float,
    codecs: Sequence[str],
    *,
    policy: str = "neurosurgeon",
    constraints: Constraints = Constraints(),
    lo_bps: float = DEFAULT_LO_BPS,
    hi_bps: float = DEFAULT_HI_BPS,
) -> list[str]:
    """Names of the cuts `policy` chooses somewhere in [lo_bps, hi_bps] with any of `codecs`, in
    the profile's (head-size) order."""
    chosen: set[str] = set()
    for codec in codecs:
        segments = sweep_bandwidth(
            profile,
            rtt_ms,
            codec=codec,
            policy=policy,
            constraints=constraints,
            lo_bps=lo_bps,
            hi_bps=hi_bps,
            steps=128,
        )
        chosen.update(s.cut for s in segments if s.cut != NO_CUT)
    if not chosen:
        raise SplitInferError(
            f"no cut of {profile.model_id!r} satisfies the constraints ({constraints}) between {lo_bps:g} and {hi_bps:g} bit/s"
        )
    return [cut.name for cut in profile.cuts if cut.name in chosen]


def decision_table(
    profile: Profile,
    cuts: Sequence[str],
    codecs: Sequence[str],
    *,
    rtt_ms: float,
    policy: str = "neurosurgeon",
    constraints: Constraints = Constraints(),
) -> DecisionTable:
    """The bundle's decision table: one Choice per (cut, codec) (one per all-on-device cut)."""
    codecs = [Codec.parse(c).name for c in codecs]
    # Any bandwidth: only the parts that do not depend on it are kept.
    anywhere = NetworkModel(1e6, 0.0)
    times = monotone_times(profile)
    choices = []
    for name in cuts:
        cut = profile.cut(name)
        for codec in codecs[:1] if cut.is_edge_only else codecs:
            cost = cut_cost(profile, cut, anywhere, codec, times=times)
            # A codec the accuracy budget refuses at this cut is no choice the device may make.
            if constraints.meets_accuracy(cost):
                choices.append(cost.choice())
    switching = {
        codec: [
            (s.lo_bps, s.hi_bps, s.cut)
            for s in sweep_bandwidth(
                profile,
                rtt_ms,
                codec=codec,
                policy=policy,
                constraints=constraints,
                lo_bps=DEFAULT_LO_BPS,
                hi_bps=DEFAULT_HI_BPS,
                steps=128,
            )
        ]
        for codec in codecs
    }
    return DecisionTable(
        tuple(choices), rtt_ms, profile.model_id, profile.edge_slowdown, profile.machine.get("processor", ""), switching
    )


def export_adaptive(
    spec: str,
    out: str | Path,
    profile: Profile,
    *,
    rtt_ms: float,
    codecs: Sequence[str],
    constraints: Constraints = Constraints(),
    input_shape: tuple[int, ...] | None = None,
    samples: int = 4,
    min_agreement: float = 1.0,
    max_error: float | None = None,
    samples_path: Path | None = None,
    metric: str | None = None,
    preprocess: str | None = None,
):
    """The multi-cut bundle of model `spec`: the candidate cuts of `profile` at `rtt_ms` with
    `codecs`, their decision table, verified. With a task metric (the model's own, or `metric`),
    only the (cut, codec) pairs the accuracy budget admits by the profile's agreement are carried,
    and each is verified by the same rule on the same samples (splitter.export.bundle); without one, on
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
    names = candidate_cuts(profile, rtt_ms, codecs, constraints=constraints)
    decisions = decision_table(profile, names, codecs, rtt_ms=rtt_ms, constraints=constraints)
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
