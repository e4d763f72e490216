"""The experiment's grid: one `Cell` per (model, policy, codec, condition) of the config, and what a
cell's condition and policy mean to the rest of the run: the NetworkModel a plan is made for, the
link the oracle predicts over, and the Constraints the planner honours.
"""

from __future__ import annotations

import dataclasses
from itertools import product

from experiment.conditions import Condition
from experiment.config import ExperimentConfig, ModelSpec


@dataclasses.dataclass(frozen=True)
class Cell:
    model: ModelSpec
    policy: str
    codec: str
    condition: Condition


def cells(config: ExperimentConfig) -> list[Cell]:
    grid = product(config.models, config.policies, config.codecs, config.conditions)
    return [Cell(model, policy, codec, condition) for model, policy, codec, condition in grid]


def planning_network(condition: Condition):
    """The NetworkModel a plan is made for: the fixed rate, or a trace's mean rate."""
    from netemu.traces import load_trace
    from splitter.cost.network import NetworkModel

    rate = condition.rate_bps if condition.trace is None else load_trace(condition.trace).mean_rate_bps
    return NetworkModel(rate, condition.rtt_ms, condition.name)


def link_model(condition: Condition):
    """The condition as the oracle predicts over it (experiment.oracle.Link): RTT, rate or trace."""
    from experiment.oracle import Link
    from netemu.traces import load_trace

    trace = load_trace(condition.trace) if condition.trace is not None else None
    return Link(condition.rtt_ms, condition.rate_bps, trace)


def constraints_for(config: ExperimentConfig, policy: str):
    """cloud-only is the baseline that sends the raw input: it always may; the others as configured."""
    from splitter.policies import Constraints

    return Constraints(allow_raw_input=config.allow_raw_input or policy == "cloud-only")
