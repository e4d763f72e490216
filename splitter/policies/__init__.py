"""Cut-choosing policies, by name. Importing this package registers the built-ins."""

from splitter.policies import baselines, latency  # noqa: F401  (registration side effect)
from splitter.policies._registry import Constraints, Policy, create_policy, list_policies, register_policy

__all__ = ["Constraints", "Policy", "create_policy", "list_policies", "register_policy"]
