"""The built-in policies on a hand-made profile whose answers are known (each also checked against a
brute-force argmin of its own objective), the constraints every policy honours, the checks on a
policy's choice, and plug-in discovery through entry points (a dist-info directory on sys.path)."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from handmade import cut, profile

from protos.errors import SplitInferError
from protos.power import PowerModel
from protos.units import parse_size_bytes
from splitter.cost.cut_cost import CutCost
from splitter.cost.network import NetworkModel
from splitter.cost.plan import plan
from splitter.policies import Constraints, create_policy, list_policies, register_policy, reset_plugins

NET = NetworkModel(8e6, 10.0)  # one byte takes one microsecond
BUILT_IN = {"cloud-only", "edge-only", "energy", "neurosurgeon", "throughput"}


def stream_profile():
    """Totals on NET: a 71.75, b 35.75, c 28.75, d 32.25, output 24 ms.
    Periods (slowest stage): a 40, b 10.25, c 12.5, d 20.5, output 24 ms."""
    return profile([
        cut("a", 1, 1.0, 20.0, 40_000, memory=(1000, 5000)),
        cut("b", 2, 5.0, 10.0, 10_000, memory=(3000, 4000)),
        cut("c", 3, 12.0, 3.0, 3_000, memory=(9000, 2000)),
        cut("d", 4, 20.0, 1.0, 500, memory=(20000, 1000)),
        cut("output", 5, 24.0, 0.0, 0, memory=(30000, 500)),
    ])  # fmt: skip


SPLIT = Constraints(allow_edge_only=False)


def test_the_built_ins_are_registered() -> None:
    assert BUILT_IN <= set(list_policies())


def test_each_policy_optimises_its_own_objective() -> None:
    costs = plan(stream_profile(), NET).costs
    assert {c.name: round(c.total_ms, 2) for c in costs} == {
        "a": 71.75,
        "b": 35.75,
        "c": 28.75,
        "d": 32.25,
        "output": 24.0,
    }
    assert {c.name: c.period_ms for c in costs} == {"a": 40.0, "b": 10.25, "c": 12.5, "d": 20.5, "output": 24.0}
    assert plan(stream_profile(), NET, policy="neurosurgeon").chosen.name == "output"
    assert plan(stream_profile(), NET, policy="neurosurgeon", constraints=SPLIT).chosen.name == "c"
    throughput = plan(stream_profile(), NET, policy="throughput").chosen
    assert throughput.name == "b" and throughput.frames_per_s == pytest.approx(1000 / 10.25)
    # Cheap radio, costly compute: sending early saves the device's energy, though it is slow.
    radio_cheap = PowerModel(compute_w=5.0, radio_j_per_byte=1e-7, idle_w=0.1)
    energy = plan(stream_profile(), NET, policy="energy", power=radio_cheap).chosen
    assert energy.name == "a" and energy.energy_mj == pytest.approx(
        5.0 * 1.5 + 1e-7 * 40_000 * 1e3 + 0.1 * (40 + 10 + 0.25 + 20)
    )
    # With the default (phone on 4G) model the radio is dear and keeping everything wins.
    assert plan(stream_profile(), NET, policy="energy").chosen.name == "output"
    for policy, key in [
        ("neurosurgeon", lambda c: c.total_ms),
        ("throughput", lambda c: c.period_ms),
        ("energy", lambda c: c.energy_mj),
    ]:
        for constraints in (Constraints(), SPLIT):
            result = plan(stream_profile(), NET, policy=policy, constraints=constraints, power=radio_cheap)
            assert key(result.chosen) == min(key(c) for c in constraints.admit(result.costs)), (policy, constraints)


def profile_with_input():
    """`stream_profile` with the raw input as a cut too, so that every policy has its answer."""
    base = stream_profile()
    return dataclasses.replace(base, cuts=(cut("input", 0, 0.0, 26.0, 150_000), *base.cuts))


FIXED_CUT = {"edge-only": "output", "cloud-only": "input"}
# Policies that build their own cut from per-op costs, which a hand-made profile has none of
# (tests/splitter/test_mincut.py checks the min-cut on profiles that have them).
NEEDS_OPS = {"mincut"}


@pytest.mark.parametrize("name", list_policies())
@pytest.mark.parametrize(
    "constraints",
    [
        Constraints(),
        SPLIT,
        Constraints(allow_raw_input=True),
        Constraints(max_head_memory_bytes=12_000),
        Constraints(deadline_ms=40),
    ],
    ids=["none", "split", "raw-input", "memory", "deadline"],
)
def test_every_registered_policy_chooses_an_admitted_cut_deterministically(name: str, constraints: Constraints) -> None:
    """Whatever a policy optimises, its choice is one of the costs it was given that the
    constraints admit, and the same inputs give the same choice; a policy of one fixed cut that
    the constraints exclude says so, naming the cut."""
    fixed = FIXED_CUT.get(name)
    if name in NEEDS_OPS:
        with pytest.raises(SplitInferError, match=f"policy '{name}' needs per-op costs"):
            plan(profile_with_input(), NET, policy=name, constraints=constraints)
        return
    costs = plan(profile_with_input(), NET, constraints=Constraints(allow_raw_input=True)).costs
    if fixed is not None and fixed not in {c.name for c in constraints.admit(costs)}:
        with pytest.raises(SplitInferError, match=f"the constraints exclude the '{fixed}' cut"):
            plan(profile_with_input(), NET, policy=name, constraints=constraints)
        return
    first = plan(profile_with_input(), NET, policy=name, constraints=constraints)
    assert first.chosen.name in {c.name for c in constraints.admit(first.costs)}
    assert plan(profile_with_input(), NET, policy=name, constraints=constraints).chosen == first.chosen


def test_a_deadline_binds_every_policy() -> None:
    # b, the fastest-streaming cut, takes 35.75 ms: a 30 ms deadline moves throughput to c.
    assert plan(stream_profile(), NET, policy="throughput", constraints=Constraints(deadline_ms=30)).chosen.name == "c"
    assert plan(stream_profile(), NET, policy="energy", constraints=Constraints(deadline_ms=25)).chosen.name == "output"
    with pytest.raises(
        SplitInferError,
        match=r"at most 25 ms \(--deadline\).*the fastest cut the other rules allow takes 28.8 ms, over the 25 ms deadline",
    ):
        plan(stream_profile(), NET, constraints=Constraints(allow_edge_only=False, deadline_ms=25))


def test_a_memory_limit_binds_every_policy() -> None:
    memory = {c.name: c.head_memory_bytes for c in plan(stream_profile(), NET).costs}
    assert memory == {"a": 6000, "b": 7000, "c": 11000, "d": 21000, "output": 30500}
    limited = Constraints(max_head_memory_bytes=8000)
    assert plan(stream_profile(), NET, constraints=limited).chosen.name == "b"
    assert plan(stream_profile(), NET, policy="energy", constraints=limited).chosen.name == "b"
    with pytest.raises(
        SplitInferError, match=r"the smallest head the other rules allow needs 6,000 bytes, over the 1,000-byte limit"
    ):
        plan(stream_profile(), NET, constraints=Constraints(max_head_memory_bytes=1000))


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("4MB", 4_000_000), ("512KiB", 524_288), ("1.5GB", 1_500_000_000), ("100", 100), ("2 mib", 2 << 20)],
)
def test_parse_size(text: str, nbytes: int) -> None:
    assert parse_size_bytes(text) == nbytes


@pytest.mark.parametrize("text", ["4MBB", "big", "", "-1MB"])
def test_bad_sizes_are_named(text: str) -> None:
    with pytest.raises(SplitInferError, match=f"memory size {text!r} is not a number"):
        parse_size_bytes(text)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"min_head_ops": -1}, "min_head_ops must be non-negative"), ({"deadline_ms": 0}, "deadline_ms must be a positive number"),
     ({"deadline_ms": float("nan")}, "deadline_ms must be"), ({"max_head_memory_bytes": -5}, "max_head_memory_bytes must be non-negative")],
)  # fmt: skip
def test_bad_constraints_are_named(kwargs: dict, fragment: str) -> None:
    with pytest.raises(SplitInferError, match=fragment):
        Constraints(**kwargs)


# ------------------------------------------------------------------------ a policy's choice is checked


@register_policy("test-rogue")
class Rogue:
    """Ignores the constraints: always the all-on-device cut."""

    def choose(self, costs, constraints) -> CutCost:
        return next(c for c in costs if c.is_edge_only)


@register_policy("test-confused")
class Confused:
    def choose(self, costs, constraints) -> str:
        return "b"


def test_a_choice_the_constraints_exclude_is_an_error_naming_the_policy() -> None:
    assert plan(stream_profile(), NET, policy="test-rogue").chosen.name == "output"
    with pytest.raises(
        SplitInferError, match=r"policy 'test-rogue' chose cut 'output', which the constraint allow_edge_only excludes"
    ):
        plan(stream_profile(), NET, policy="test-rogue", constraints=SPLIT)
    with pytest.raises(SplitInferError, match=r"policy 'test-confused' returned 'b', not a CutCost"):
        plan(stream_profile(), NET, policy="test-confused")


def test_a_name_registers_once() -> None:
    with pytest.raises(ValueError, match="policy 'neurosurgeon' is already registered"):
        register_policy("neurosurgeon")(Rogue)


# ------------------------------------------------------------------------------ plug-ins (entry points)

PLUGIN_MODULE = '''
"""Test plug-ins: a good one, and ways to be broken."""
from splitter.policies import Constraints


class FewestBytes:
    def choose(self, costs, constraints: Constraints):
        return min(constraints.admit(costs), key=lambda c: (c.nbytes, c.head_size))


class NoChoose:
    pass


class Explodes:
    def __init__(self):
        raise RuntimeError("no licence key")
'''


def write_plugin(
    root: Path, entries: dict[str, str], *, dist: str = "splitinfer_test_plugin", module: str = PLUGIN_MODULE
) -> Path:
    """A package as pip would install it: the module, and a dist-info with METADATA and entry_points.txt."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{dist}.py").write_text(module)
    info = root / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {value}\n" for name, value in entries.items())
    (info / "entry_points.txt").write_text(f"[splitinfer.policies]\n{lines}")
    return root


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Puts plug-in packages on sys.path for the test (as an install would), and takes them off after."""
    added: list[tuple[str, str]] = []

    def install(entries: dict[str, str], dist: str = "splitinfer_test_plugin0") -> None:
        root = write_plugin(tmp_path / dist, entries, dist=dist)
        sys.path.insert(0, str(root))
        added.append((str(root), dist))
        reset_plugins()

    yield install
    for path, dist in added:
        sys.path.remove(path)
        sys.modules.pop(dist, None)
    reset_plugins()


def test_a_plugin_is_found_by_name_and_plans(installed) -> None:
    installed({"fewest-bytes": "splitinfer_test_plugin0:FewestBytes"})
    assert "fewest-bytes" in list_policies() and BUILT_IN <= set(list_policies())
    result = plan(stream_profile(), NET, policy="fewest-bytes", constraints=SPLIT)
    assert result.chosen.name == "d" and result.policy == "fewest-bytes"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (
            "splitinfer_test_plugin0:Missing",
            r"policy plug-in 'broken' \(splitinfer_test_plugin0:Missing from splitinfer_test_plugin0 1.0\) failed to load: AttributeError",
        ),
        (
            "no_such_module_anywhere:Policy",
            r"policy plug-in 'broken' \(no_such_module_anywhere:Policy .*\) failed to load: ModuleNotFoundError",
        ),
        ("splitinfer_test_plugin0:NoChoose", r"policy plug-in 'broken' .* has no choose\(costs, constraints\) method"),
        (
            "splitinfer_test_plugin0:Explodes",
            r"policy plug-in 'broken' .* failed to start: RuntimeError: no licence key",
        ),
    ],
)
def test_a_broken_plugin_is_named_and_breaks_only_itself(installed, value: str, fragment: str) -> None:
    installed({"broken": value})
    with pytest.raises(SplitInferError, match=fragment):
        plan(stream_profile(), NET, policy="broken")
    assert plan(stream_profile(), NET).chosen.name == "output"


def test_a_plugin_may_not_take_a_built_in_name(installed) -> None:
    installed({"neurosurgeon": "splitinfer_test_plugin0:FewestBytes"})
    with pytest.raises(
        SplitInferError,
        match=r"policy 'neurosurgeon' is built in, and plug-in splitinfer_test_plugin0:FewestBytes .* declares it too",
    ):
        plan(stream_profile(), NET)


def test_two_plugins_of_one_name_are_refused(installed) -> None:
    installed({"fewest-bytes": "splitinfer_test_plugin0:FewestBytes"})
    installed({"fewest-bytes": "splitinfer_test_plugin1:FewestBytes"}, dist="splitinfer_test_plugin1")
    with pytest.raises(SplitInferError, match="policy 'fewest-bytes' is declared by several plug-ins"):
        create_policy("fewest-bytes")
