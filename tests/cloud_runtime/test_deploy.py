"""deploy/ stays in step with the server: every option the container and the Kubernetes manifests
pass to `splitinfer serve` exists, the probes ask the port the image serves health on, and the pod
is given time for its drain."""

from __future__ import annotations

import json
import re
from pathlib import Path

import typer.main

from splitinfer.app import app

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _serve_options() -> set[str]:
    command = typer.main.get_command(app).commands["serve"]  # type: ignore[attr-defined]
    return {opt for param in command.params for opt in param.opts if opt.startswith("--")}


def _entrypoint() -> list[str]:
    line = next(
        text for text in (DEPLOY / "server.Dockerfile").read_text().splitlines() if text.startswith("ENTRYPOINT")
    )
    return json.loads(line.removeprefix("ENTRYPOINT"))


def _deployment_args(text: str) -> list[str]:
    return re.findall(r"^\s+- (--[a-z-]+)(?:=\S+)?\s*(?:#.*)?$", text, re.M)


def test_every_option_the_deployment_passes_exists() -> None:
    options = _serve_options()
    entrypoint = _entrypoint()
    assert entrypoint[:2] == ["splitinfer", "serve"]
    passed = [a for a in entrypoint if a.startswith("--")]
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    passed += _deployment_args(deployment)
    # Including the commented mutual-TLS option, so uncommenting it works too.
    passed += re.findall(r"#\s+- (--[a-z-]+)=", deployment)
    assert "--tls-client-ca" in passed and "--tokens" in passed
    unknown = sorted(set(passed) - options)
    assert not unknown, f"deploy/ passes options `splitinfer serve` does not have: {unknown}"


def test_probes_ask_the_health_port_and_the_pod_outlives_its_drain() -> None:
    entrypoint = _entrypoint()
    health_port = entrypoint[entrypoint.index("--health-port") + 1]
    deployment = (DEPLOY / "k8s" / "deployment.yaml").read_text()
    probes = re.findall(
        r"(startupProbe|readinessProbe|livenessProbe):\s*\n(?:\s+#.*\n)*\s+grpc:\s*\n\s+port: (\d+)", deployment
    )
    assert sorted(name for name, _ in probes) == ["livenessProbe", "readinessProbe", "startupProbe"]
    assert {port for _, port in probes} == {health_port}
    assert "service: splitinfer.v1.SplitInference" in deployment
    assert re.search(rf"name: health\s+containerPort: {health_port}", deployment)

    grace_s = float(re.search(r"--grace-s=(\d+(?:\.\d+)?)", deployment).group(1))  # type: ignore[union-attr]
    pre_stop_s = float(re.search(r'command: \["sleep", "(\d+)"\]', deployment).group(1))  # type: ignore[union-attr]
    termination_s = float(re.search(r"terminationGracePeriodSeconds: (\d+)", deployment).group(1))  # type: ignore[union-attr]
    assert termination_s > pre_stop_s + grace_s


def test_the_edge_image_holds_the_edge_runtime_only_and_runs_the_client() -> None:
    lines = (DEPLOY / "edge.Dockerfile").read_text().splitlines()
    copied = {line.split()[1] for line in lines if line.startswith("COPY")}
    assert {"protos", "edge_runtime", "splitinfer"} <= copied
    assert not copied & {"cloud_runtime", "splitter", "netemu", "bench"}
    entrypoint = json.loads(next(text for text in lines if text.startswith("ENTRYPOINT")).removeprefix("ENTRYPOINT"))
    assert entrypoint == ["splitinfer", "run"]
    command = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in param.opts}
    assert {"--server", "--fallback", "--tls-ca"} <= options


def test_the_ray_serve_config_names_what_exists() -> None:
    import importlib

    text = (DEPLOY / "ray" / "serve.yaml").read_text()
    import_path = re.search(r"import_path: (\S+)", text).group(1)  # type: ignore[union-attr]
    module, _, attribute = import_path.partition(":")
    assert module == "cloud_runtime.ray_serve" and attribute == "app"
    assert f"def {attribute}(" in (DEPLOY.parent / "cloud_runtime" / "ray_serve.py").read_text()
    for function in re.findall(r"^\s+- (protos\.\S+)$", text, re.M):
        name, _, attr = function.rpartition(".")
        assert callable(getattr(importlib.import_module(name), attr))
