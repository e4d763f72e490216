"""A profile measured in a thread held to a tenth of a CPU by a cgroup quota prices the device
10× slower: the head's CPU clock reads as unthrottled, so the quota goes into edge_slowdown
(protos.cpu_quota). A real cgroup (v1, root), a real onnxruntime profile of a small model."""

from __future__ import annotations

import numpy as np
import pytest
from bundles import tiny_model

from experiment.device import cgroup_quota, cgroup_unavailable_reason
from protos.cpu_quota import cpu_share
from splitter.graph.cuts import enumerate_cuts
from splitter.graph.graph import graph_from_onnx
from splitter.profile.measure import profile_cuts
from splitter.profile.timing import ProfileSettings


@pytest.mark.skipif(cgroup_unavailable_reason() is not None, reason=f"cgroup quota: {cgroup_unavailable_reason()}")
def test_a_profile_under_a_tenth_of_a_cpu_prices_the_device_ten_times_slower() -> None:
    model = tiny_model()
    graph = graph_from_onnx(model)
    cuts = enumerate_cuts(graph, include_input=True)
    sample = {"x": np.ones((1, 3, 8, 8), np.float32)}
    settings = ProfileSettings(repeats=2, warmup=0, codecs=("fp32",), edge_slowdown=3.0)
    free = profile_cuts(model, "tiny", cuts, sample, settings, graph=graph)
    assert free.edge_slowdown == 3.0 and "cpu_share" not in free.machine
    with cgroup_quota(10.0):
        assert cpu_share() == pytest.approx(0.1)
        held = profile_cuts(model, "tiny", cuts, sample, settings, graph=graph)
    assert held.edge_slowdown == pytest.approx(30.0)
    assert "0.1" in held.machine["cpu_share"]
