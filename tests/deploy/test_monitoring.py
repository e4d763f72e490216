"""The alert rules (deploy/prometheus/, deploy/k8s/monitoring/) and the Grafana dashboard
(deploy/grafana/) ask for what a server exports.

A real server on loopback, with tokens and /metrics, is sent requests that end OK, NOT_FOUND,
INVALID_ARGUMENT and FAILED_PRECONDITION and calls refused for a missing, malformed and invalid
token; its scrape is then the reference. Every expression is parsed by promql-parser (a port of
Prometheus' own parser: a syntax error fails here as it would in `promtool check rules`), and in
its syntax tree every metric must be in the scrape, every label it matches, groups or joins by must
be on that metric, every status code it names a gRPC code, every other label value it asks for one
the scrape has; each `{{ $labels.X }}` of an alert (and `{{X}}` of a panel's legend) must be a label
the expression's result keeps. The metrics Prometheus or kube-state-metrics add (`up`,
`kube_deployment_*`) are not the server's and are taken as they are.

promtool itself is not run: it comes with Prometheus (Debian's `prometheus` package), which
`make test` would have to install as root; this checks what the rules ask of the server, which
promtool cannot.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import promql_parser as promql
import pytest
import yaml
from bundles import build_bundle, request_for, tiny_input
from prometheus_client.parser import text_string_to_metric_families

from cloud_runtime.config import ServerConfig
from cloud_runtime.server import serve
from edge_runtime.client import EdgeClient
from edge_runtime.config import EdgeConfig
from protos.splitinfer.v1 import inference_pb2_grpc as pb_grpc

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "splitinfer-rules.yaml"
PROMETHEUS_RULE = DEPLOY / "k8s" / "monitoring" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "splitinfer-dashboard.json"
TOKEN = "edge-token-0123456789"
# Metrics that are not the server's: Prometheus' own per target, and kube-state-metrics'.
EXTERNAL = re.compile(r"^(up|kube_deployment_spec_replicas|kube_deployment_status_replicas_available)$")
# Labels Prometheus gives every series of a target.
TARGET_LABELS = {"job", "instance"}
STATUS_CODES = {code.name for code in grpc.StatusCode}
# Grafana's variables, as a query would be sent with them.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$model": ".*"}


@dataclass
class Scrape:
    """Label names by metric (sample) name, and the values of each (metric, label)."""

    labels: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    values: dict[tuple[str, str], set[str]] = field(default_factory=lambda: defaultdict(set))

    def add(self, text: str) -> None:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                self.labels[sample.name] |= set(sample.labels)
                for label, value in sample.labels.items():
                    self.values[(sample.name, label)].add(value)


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scrape]:
    bundle = build_bundle(tmp_path_factory.mktemp("monitoring"))
    config = ServerConfig([bundle.path], threads=1, max_workers=8, tokens={TOKEN: "edge"}, metrics_port=0)
    with serve(config) as running:
        with EdgeClient(bundle.path, running.address, EdgeConfig(token=TOKEN)) as client:
            for seed in range(3):
                client.infer(tiny_input(seed))
        good = request_for(bundle, tiny_input())
        unknown_model = request_for(bundle, tiny_input())
        unknown_model.model_id = "not-served"
        other_bundle = request_for(bundle, tiny_input())
        other_bundle.bundle_hash = "0" * 64
        malformed = request_for(bundle, tiny_input())
        malformed.tensors[0].data = b"\x00" * 3
        with grpc.insecure_channel(running.address) as channel:
            stub = pb_grpc.SplitInferenceStub(channel)
            calls = [
                (unknown_model, (("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.NOT_FOUND),
                (other_bundle, (("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.FAILED_PRECONDITION),
                (malformed, (("authorization", f"Bearer {TOKEN}"),), grpc.StatusCode.INVALID_ARGUMENT),
                (good, (), grpc.StatusCode.UNAUTHENTICATED),
                (good, (("authorization", "Basic abc"),), grpc.StatusCode.UNAUTHENTICATED),
                (good, (("authorization", "Bearer not-a-token"),), grpc.StatusCode.UNAUTHENTICATED),
            ]
            for request, metadata, code in calls:
                with pytest.raises(grpc.RpcError) as refused:
                    stub.Infer(request, metadata=metadata, timeout=10)
                assert refused.value.code() == code, refused.value.details()
        reference = Scrape()
        url = f"http://127.0.0.1:{running.metrics_endpoint.port}/metrics"  # type: ignore[union-attr]
        with urllib.request.urlopen(url, timeout=10) as reply:
            reference.add(reply.read().decode())
    # What the checks below lean on: the refusals were counted, by code and by reason.
    codes = reference.values[("splitinfer_requests_total", "code")]
    assert {"OK", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT"} <= codes, codes
    assert reference.values[("splitinfer_auth_failures_total", "reason")] == {"missing", "malformed", "invalid"}
    yield reference


def _selectors(expr: promql.Expr) -> list[promql.VectorSelector]:
    found: list[promql.VectorSelector] = []

    def visit(node: object) -> None:
        if isinstance(node, promql.VectorSelector):
            found.append(node)

    promql.walk(expr, visit)
    return found


def _groupings(expr: promql.Expr) -> list[list[str]]:
    """The labels of every `by (...)`/`without (...)` and `on (...)`/`ignoring (...)`."""
    found: list[list[str]] = []

    def visit(node: object) -> None:
        if isinstance(node, promql.AggregateExpr) and node.modifier is not None:
            found.append(list(node.modifier.labels))
        if isinstance(node, promql.BinaryExpr) and node.modifier is not None and node.modifier.matching is not None:
            found.append(list(node.modifier.matching.labels))

    promql.walk(expr, visit)
    return found


def _kept(expr: promql.Expr, scrape: Scrape) -> set[str] | None:
    """The labels of the expression's result (None: whatever its metrics carry, unknown here)."""
    if isinstance(expr, promql.VectorSelector):
        return None if EXTERNAL.match(expr.name) else scrape.labels[expr.name] | TARGET_LABELS
    if isinstance(expr, promql.MatrixSelector):
        return _kept(expr.vector_selector, scrape)
    if isinstance(expr, (promql.ParenExpr, promql.UnaryExpr, promql.SubqueryExpr)):
        return _kept(expr.expr, scrape)
    if isinstance(expr, promql.AggregateExpr):
        if expr.modifier is None:
            return set()
        if expr.modifier.type == promql.AggModifierType.By:
            return set(expr.modifier.labels)
        inner = _kept(expr.expr, scrape)
        return None if inner is None else inner - set(expr.modifier.labels)
    if isinstance(expr, promql.Call):
        vectors = [arg for arg in expr.args if not isinstance(arg, (promql.NumberLiteral, promql.StringLiteral))]
        if expr.func.name == "absent":
            return {m.name for s in _selectors(expr) for m in s.matchers.matchers if m.op == promql.MatchOp.Equal}
        inner = _kept(vectors[0], scrape) if vectors else set()
        return None if inner is None else inner - ({"le"} if expr.func.name == "histogram_quantile" else set())
    if isinstance(expr, promql.BinaryExpr):
        sides = [s for s in (expr.lhs, expr.rhs) if not isinstance(s, promql.NumberLiteral)]
        return _kept(sides[0], scrape) if sides else set()
    return set()


def check_expression(where: str, text: str, scrape: Scrape, templated: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    """Fails with what is wrong about `text` (a PromQL expression), named by `where`."""
    try:
        expr = promql.parse(text)
    except ValueError as err:
        pytest.fail(f"{where}: not PromQL: {err}: {text}")
    selectors = _selectors(expr)
    assert selectors, f"{where}: asks for no metric: {text}"
    own = [s for s in selectors if not EXTERNAL.match(s.name)]
    for selector in own:
        metric = selector.name
        assert metric in scrape.labels, f"{where}: {metric} is not in a server's scrape"
        for matcher in selector.matchers.matchers:
            label, value = matcher.name, matcher.value
            assert label in scrape.labels[metric] | TARGET_LABELS, f"{where}: {metric} has no label {label!r}"
            regex = matcher.op in (promql.MatchOp.Re, promql.MatchOp.NotRe)
            wanted = value.split("|") if regex else [value]
            if label == "code":
                unknown = sorted(set(wanted) - STATUS_CODES)
                assert not unknown, f"{where}: {unknown} are not gRPC status codes"
            elif label not in TARGET_LABELS and not (regex and value == ".*"):
                seen = scrape.values[(metric, label)]
                missing = sorted(set(wanted) - seen)
                assert not missing, f"{where}: {metric}{{{label}}} takes {sorted(seen)}, never {missing}"
    labels_there = set().union(*(scrape.labels[s.name] for s in own)) | TARGET_LABELS
    for grouping in _groupings(expr):
        if own:
            unknown = sorted(set(grouping) - labels_there)
            assert not unknown, f"{where}: groups or joins by {unknown}, which its metrics do not carry"
    kept = _kept(expr, scrape)
    if kept is not None:
        lost = sorted(templated - kept)
        assert not lost, f"{where}: uses labels {lost}, which its result does not keep (it keeps {sorted(kept)})"


def _alert_rules(groups: list[dict]) -> list[dict]:
    return [rule for group in groups for rule in group["rules"]]


def _templated(text: str, pattern: str) -> set[str]:
    return set(re.findall(pattern, text))


def test_the_plain_rules_and_the_prometheus_rule_hold_the_same_alerts() -> None:
    plain = yaml.safe_load(RULES.read_text())["groups"]
    operator = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert operator["kind"] == "PrometheusRule" and operator["apiVersion"] == "monitoring.coreos.com/v1"
    groups = operator["spec"]["groups"]
    # The plain file's groups word for word, and one of Kubernetes' own (kube-state-metrics).
    assert groups[: len(plain)] == plain
    assert [g["name"] for g in groups[len(plain) :]] == ["splitinfer-kubernetes"]


def test_the_alerts_cover_what_operators_page_on() -> None:
    rules = _alert_rules(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"])
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    text = " ".join(rule["expr"] for rule in rules)
    for asked in (
        "splitinfer_requests_total{code=~",  # error ratio
        "splitinfer_stage_seconds_bucket",  # p99 latency per stage
        'code="RESOURCE_EXHAUSTED"',  # queue saturation
        "splitinfer_queue_depth",
        "splitinfer_auth_failures_total",  # auth failures
        'up{job="splitinfer-server"} == 0',  # replicas down
    ):
        assert asked in text, asked
    for rule in rules:
        assert promql.parse_duration(rule["for"]).total_seconds() > 0, rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


@pytest.mark.parametrize(
    "rule", _alert_rules(yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]), ids=lambda r: r["alert"]
)
def test_each_alert_asks_for_what_a_server_exports(rule: dict, scrape: Scrape) -> None:
    annotations = " ".join(rule["annotations"].values())
    check_expression(rule["alert"], rule["expr"], scrape, _templated(annotations, r"\$labels\.(\w+)"))


def _panels() -> list[dict]:
    return json.loads(DASHBOARD.read_text())["panels"]


def test_the_dashboard_is_a_grafana_dashboard_on_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["datasource"] == panel["datasource"] for t in panel["targets"])
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys() and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


@pytest.mark.parametrize("panel", _panels(), ids=lambda p: p["title"])
def test_each_panel_queries_what_a_server_exports(panel: dict, scrape: Scrape) -> None:
    for target in panel["targets"]:
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{panel['title']}: an unknown variable in {target['expr']}"
        legend = _templated(target.get("legendFormat", ""), r"\{\{\s*(\w+)\s*\}\}")
        check_expression(f"panel {panel['title']!r}", expr, scrape, legend)


def test_the_model_variable_lists_a_label_the_server_exports(scrape: Scrape) -> None:
    variables = {v["name"]: v for v in json.loads(DASHBOARD.read_text())["templating"]["list"]}
    metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variables["model"]["query"]["query"]).groups()  # type: ignore[union-attr]
    assert label in scrape.labels[metric] and "tiny" in scrape.values[(metric, label)]


@pytest.mark.parametrize(
    ("expr", "templated", "message"),
    [
        ("rate(splitinfer_request_total[5m])", set(), "splitinfer_request_total is not in a server's scrape"),
        ('rate(splitinfer_requests_total{cod="OK"}[5m])', set(), "has no label 'cod'"),
        ('rate(splitinfer_requests_total{code="FAILED"}[5m])', set(), "['FAILED'] are not gRPC status codes"),
        ('splitinfer_stage_seconds_bucket{stage="network"}', set(), "never ['network']"),
        ("sum by (reason) (rate(splitinfer_requests_total[5m]))", set(), "groups or joins by ['reason']"),
        ("sum(rate(splitinfer_requests_total[5m])) > 1", {"model"}, "uses labels ['model']"),
        ("sum by (model) (rate(splitinfer_requests_total[5m]) > 1", set(), "not PromQL"),
    ],
)
def test_the_check_finds_what_is_wrong(expr: str, templated: set[str], message: str, scrape: Scrape) -> None:
    with pytest.raises(pytest.fail.Exception if message == "not PromQL" else AssertionError, match=re.escape(message)):
        check_expression("case", expr, scrape, templated)


def test_a_scrape_parses_a_stage_histogram(scrape: Scrape) -> None:
    # The histograms the latency alerts read carry the stage and le labels they group by.
    assert {"model", "stage", "le"} <= scrape.labels["splitinfer_stage_seconds_bucket"]
    assert {"decode", "queue", "tail", "encode", "total"} <= scrape.values[("splitinfer_stage_seconds_bucket", "stage")]
