"""Every Kubernetes manifest in deploy/ is valid against the Kubernetes API's own schemas, offline:
kubernetes-validate bundles the OpenAPI schemas of each release, checked strictly (an unknown or
misspelt field is an error, as `kubectl apply --validate=strict` makes it). The oldest release it
bundles (1.25; deploy/README.md asks for ≥ 1.24) and the newest are both checked. Resources of the
Prometheus Operator (deploy/k8s/monitoring/) are custom resources with no schema in Kubernetes;
tests/deploy/test_monitoring.py checks their content."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kubernetes_validate import utils as kubernetes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
VERSIONS = (kubernetes.all_versions()[0], kubernetes.latest_version())
# Not Kubernetes API objects: kustomize's own file, and the Prometheus Operator's custom resources.
KUSTOMIZATION = "kustomize.config.k8s.io/v1beta1"
OPERATOR = "monitoring.coreos.com/v1"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _manifests() -> list[tuple[Path, dict]]:
    """Every YAML document under deploy/ that is a Kubernetes object (it has apiVersion and kind)."""
    found = [
        (path, doc)
        for path in sorted(DEPLOY.rglob("*.yaml"))
        for doc in _documents(path)
        if {"apiVersion", "kind"} <= doc.keys()
    ]
    assert len(found) >= 5, found
    return found


MANIFESTS = _manifests()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(
    ("path", "manifest"),
    [m for m in MANIFESTS if m[1]["apiVersion"] not in (KUSTOMIZATION, OPERATOR)],
    ids=lambda m: m.relative_to(DEPLOY).as_posix() if isinstance(m, Path) else f"{m['kind']}/{m['metadata']['name']}",
)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(path: Path, manifest: dict, version: str) -> None:
    try:
        kubernetes.validate(manifest, version, strict=True)
    except kubernetes.ValidationError as err:
        where = ".".join(map(str, err.path))
        pytest.fail(
            f"{path.relative_to(DEPLOY)} {manifest['kind']} against Kubernetes {version}: {where}: {err.message}"
        )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["spec"].update(replica=2), "'replica' was unexpected"),
        (
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"].update(port="50052"),
            "is not of type 'integer'",
        ),
        (lambda d: d["spec"].pop("selector"), "'selector' is a required property"),
    ],
)
def test_the_validator_refuses_a_broken_deployment(change, message: str) -> None:
    """The check above can fail: a misspelt field, a wrong type, a missing required one."""
    deployment = copy.deepcopy(next(doc for path, doc in MANIFESTS if doc["kind"] == "Deployment"))
    change(deployment)
    with pytest.raises(kubernetes.ValidationError, match=message):
        kubernetes.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kustomization", sorted(DEPLOY.rglob("kustomization.yaml")), ids=lambda p: p.parent.name)
def test_each_kustomization_applies_every_manifest_beside_it(kustomization: Path) -> None:
    (config,) = _documents(kustomization)
    assert config["apiVersion"] == KUSTOMIZATION and config["kind"] == "Kustomization"
    beside = {p.name for p in kustomization.parent.glob("*.yaml") if p != kustomization}
    assert set(config["resources"]) == beside, (
        f"{kustomization}: resources {config['resources']}, files {sorted(beside)}"
    )
