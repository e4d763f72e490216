"""Planning: a Profile and a NetworkModel → the chosen cut, with the cost table that chose it.

The policy's choice is checked against the constraints here, once for every policy: a plug-in that
returns a cut the constraints exclude, or something that is not a cut's cost, is an error naming
the policy, never a plan.

The accuracy budget `max_error` admits a (cut, codec) by the task agreement the profile measured
(splitter.accuracy.agreement): its 95 % lower confidence bound must be at least 1 − max_error. A lossless
codec and the all-on-device cut change no answer and are always admitted. Export checks a bundle
by the same rule on the same samples, so it never refuses what a plan chose. A profile measured
without samples has no agreement: there the budget bounds the activations' relative L2 error.

The codec is part of the decision with `codec="auto"`: every admitted (cut, codec) pair is a
candidate and the policy chooses among them. At a low bandwidth that favours the codecs that send
fewest bytes; at a high one, a codec that costs less to encode than the transfer it saves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from protos.codec import Codec
from protos.errors import SplitInferError
from protos.power import PowerModel
from protos.units import parse_share
from splitter.accuracy.agreement import min_agreement, refuse_random_inputs
from splitter.cost.cut_cost import CostTable, CutCost, predict, profile_power
from splitter.cost.network import NetworkModel
from splitter.policies import Constraints, create_policy
from splitter.profile.schema import CutProfile, Profile

DEFAULT_CODEC = "int8+zstd"
DEFAULT_POLICY = "neurosurgeon"
AUTO_CODEC = "auto"
# Without measured agreement, the budget bounds the activations' relative L2 error, by default 1 %.
DEFAULT_MAX_ACTIVATION_ERROR = 0.01


def parse_error_budget(text: str) -> float:
    """`1%` → 0.01, `0.005` → 0.005."""
    return parse_share(text, "error budget")


@dataclass(frozen=True)
class Plan:
    model_id: str
    network: NetworkModel
    codec: str
    policy: str
    costs: tuple[CutCost, ...]
    chosen: CutCost
    max_error: float | None = None
    # What the choice was held to, the accuracy budget's min_agreement included.
    constraints: Constraints = Constraints()

    def baseline(self, name: str) -> CutCost | None:
        """The `output` (all on the device) or `input` (all on the server) cut, if profiled; with
        several codecs, its fastest."""
        return min((c for c in self.costs if c.name == name), key=lambda c: c.total_ms, default=None)

    def best_per_cut(self) -> list[CutCost]:
        """The fastest codec of each cut that the constraints allow (else the fastest of all), in
        cut order: the readable table of an `auto` plan."""
        best: dict[str, CutCost] = {}
        for cost in self.costs:
            rank = (not self.constraints.allows(cost), cost.total_ms)
            if cost.name not in best or rank < (not self.constraints.allows(best[cost.name]), best[cost.name].total_ms):
                best[cost.name] = cost
        return list(best.values())


def _within_activation_error(cut: CutProfile, codec: str, max_error: float | None) -> bool:
    """A profile measured without samples: the budget bounds the activation error instead."""
    return cut.is_edge_only or max_error is None or cut.codecs[codec].rel_error <= max_error


def has_agreement(profile: Profile) -> bool:
    return any(cost.agreement is not None for cut in profile.cuts for cost in cut.codecs.values())


def accuracy_constraints(profile: Profile, constraints: Constraints, max_error: float | None) -> Constraints:
    """`constraints` with the accuracy budget as min_agreement, where the profile measured
    agreement on real samples (on random ones it proves nothing and is not used)."""
    if not has_agreement(profile) or profile.random_samples or constraints.min_agreement is not None:
        return constraints
    return replace(constraints, min_agreement=min_agreement(max_error))


def refuse_random_samples(profile: Profile, codec: str) -> None:
    if profile.random_samples and (codec == AUTO_CODEC or Codec.parse(codec).lossy):
        refuse_random_inputs(profile.model_id, codec)


def _auto_table(profile: Profile, network: NetworkModel, max_error: float | None, power: PowerModel) -> CostTable:
    codecs = sorted({name for cut in profile.cuts for name in cut.codecs})
    # Agreement, where measured, is judged by the constraints; else the activation error here.
    activation_error = (
        None if has_agreement(profile) else (DEFAULT_MAX_ACTIVATION_ERROR if max_error is None else max_error)
    )
    costs: list[CutCost] = []
    for codec in codecs:
        for cut, cost in zip(profile.cuts, predict(profile, network, codec, power)):
            if _within_activation_error(cut, codec, activation_error) and not (cut.is_edge_only and codec != codecs[0]):
                costs.append(cost)
    # Per-op costs assume one codec everywhere; a policy that needs them plans with a fixed codec.
    return CostTable(tuple(costs), None)


def cost_table(
    profile: Profile,
    network: NetworkModel,
    codec: str = DEFAULT_CODEC,
    power: PowerModel | None = None,
    max_error: float | None = None,
    allow_random_samples: bool = False,
) -> CostTable:
    """Every profiled cut's cost, and the per-op costs when the profile has them; with `auto`, every
    (cut, codec) pair (on a profile without agreement, those within the activation-error budget)."""
    if not allow_random_samples:
        refuse_random_samples(profile, codec)
    power = power if power is not None else profile_power(profile)
    if codec == AUTO_CODEC:
        return _auto_table(profile, network, max_error, power)
    ops = None
    if profile.ops is not None:
        from splitter.cost.op_cost import op_costs

        ops = op_costs(profile, network, Codec.parse(codec).name, power)
    return CostTable(tuple(predict(profile, network, codec, power)), ops)


def choose(table: CostTable, policy: str, constraints: Constraints) -> CutCost:
    chosen = create_policy(policy).choose(table, constraints)
    if not isinstance(chosen, CutCost):
        raise SplitInferError(f"policy {policy!r} returned {chosen!r}, not a CutCost")
    refusal = constraints.refusal(chosen)
    if refusal is not None:
        raise SplitInferError(
            f"policy {policy!r} chose cut {chosen.name!r}, which the constraint {refusal} excludes ({constraints})"
        )
    return chosen


def plan(
    profile: Profile,
    network: NetworkModel,
    *,
    codec: str = DEFAULT_CODEC,
    policy: str = DEFAULT_POLICY,
    constraints: Constraints = Constraints(),
    power: PowerModel | None = None,
    max_error: float | None = None,
    allow_random_samples: bool = False,
) -> Plan:
    table = cost_table(profile, network, codec, power, max_error, allow_random_samples)
    constraints = accuracy_constraints(profile, constraints, max_error)
    return Plan(
        profile.model_id, network, codec, policy, table.cuts, choose(table, policy, constraints), max_error, constraints
    )
