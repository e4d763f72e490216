"""Cut-choosing policies, by name. Importing this package registers the built-ins; plug-ins from
other packages come in through the `splitinfer.policies` entry-point group (see _registry)."""

from splitter.policies import baselines, energy, latency, mincut, throughput  # noqa: F401  (registration side effect)
from splitter.policies._registry import (
    ENTRY_POINT_GROUP,
    Policy,
    create_policy,
    describe_policy,
    list_policies,
    register_policy,
    reset_plugins,
)
from splitter.policies.constraints import Constraints

__all__ = [
    "ENTRY_POINT_GROUP",
    "Constraints",
    "Policy",
    "create_policy",
    "describe_policy",
    "list_policies",
    "register_policy",
    "reset_plugins",
]
