"""Alert rules (issue 16): every metric an expression reads exists in the installed vLLM, thresholds come
from the Plan, each alert says what to do, and the objects validate against their CRD subsets."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from tests import ROOT
from vllm_fleet.plan import load_plan, resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.manifests import alerts
from vllm_fleet.targets.kubernetes.manifests.render import render

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "quickstart.yaml")
# kube-state-metrics, the one source of pod and workload state (its docs/metrics/workload/*.md name these).
KUBE_STATE_METRICS = {
    "kube_pod_container_status_restarts_total",
    "kube_deployment_status_replicas_available",
    "kube_statefulset_status_replicas_ready",
}
PROMQL_WORDS = {"sum", "avg", "max", "min", "by", "without", "on", "ignoring", "or", "and", "unless", "le",
                "rate", "increase", "histogram_quantile", "absent", "count", "bool", "group_left"}  # fmt: skip


def vllm_metric_names() -> set[str]:
    """The series names vLLM exports, read from its metrics code: gauges as named, counters with _total
    (prometheus_client adds it), histograms with _bucket, _sum and _count."""
    found = importlib.util.find_spec("vllm")
    if found is None or found.origin is None:
        pytest.skip("no vLLM installed here: the metric names come from its code")
    text = (Path(found.origin).parent / "v1" / "metrics" / "loggers.py").read_text()
    declared = re.findall(r"self\._(gauge|counter|histogram)_cls\(\s*name=\"(vllm:[a-z0-9_:]+)\"", text)
    assert len(declared) > 20, "vLLM's metrics code changed shape: update this reader"
    names = set()
    for kind, name in declared:
        if kind == "counter":
            names.add(name.removesuffix("_total") + "_total")
        elif kind == "histogram":
            names |= {name + suffix for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(name)
    return names


def metrics_in(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (labels, ranges, strings and functions removed)."""
    bare = re.sub(r'"[^"]*"', "", expr)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)
    bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
    words = {m.group(1) for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*(\(?)", bare) if not m.group(2)}
    return words - PROMQL_WORDS


def _rule_objects() -> list[dict]:
    return [
        o
        for p in EXAMPLES
        for env in [None, *yaml.safe_load(p.read_text()).get("environments", {})]
        for o in render(load_plan(p, env))
        if o["kind"] in ("PrometheusRule", "Rules")
    ]


def test_the_reader_finds_what_the_dashboard_always_used() -> None:
    names = vllm_metric_names()
    assert {"vllm:num_requests_waiting", "vllm:kv_cache_usage_perc", "vllm:request_success_total",
            "vllm:e2e_request_latency_seconds_bucket"} <= names  # fmt: skip
    assert metrics_in('sum(rate(x:y_total{a="b"}[5m])) / sum by (le) (z)') == {"x:y_total", "z"}


def test_every_metric_in_every_alert_exists() -> None:
    vllm = vllm_metric_names()
    objects = _rule_objects()
    assert {o["kind"] for o in objects} == {"PrometheusRule", "Rules"}
    for obj in objects:
        for rule in obj["spec"]["groups"][0]["rules"]:
            used = metrics_in(rule["expr"])
            assert used, rule["expr"]
            unknown = {m for m in used if m.startswith("vllm:")} - vllm
            assert not unknown, (rule["alert"], unknown)
            assert {m for m in used if not m.startswith("vllm:")} <= KUBE_STATE_METRICS, rule["expr"]


def test_each_alert_says_what_to_do() -> None:
    for obj in _rule_objects():
        for rule in obj["spec"]["groups"][0]["rules"]:
            description = rule["annotations"]["description"]
            assert re.search(r"\b(add|run|read|raise|lower|check|enable)\b", description, re.I), rule["alert"]
            assert rule["labels"]["severity"] in ("warning", "critical")


def _spec(**sections: dict) -> str:
    base: dict = {"name": "m", "model": {"source": "hf://org/model", "size_gb": 2}, "target": "kubernetes",
                  "kubernetes": {"namespace": "llm"}}  # fmt: skip
    base.update(sections)
    return yaml.safe_dump(base)


def _alerts(text: str) -> dict[str, dict]:
    objects = [o for o in render(resolve(parse_spec(text))) if o["kind"] in ("PrometheusRule", "Rules")]
    return {r["alert"]: r for o in objects for r in o["spec"]["groups"][0]["rules"]}


def test_thresholds_come_from_the_plan() -> None:
    rules = _alerts(_spec(slo={"p95_latency_s": 2.5}, scaling={"mode": "hpa", "max_replicas": 3,
                                                                 "target_waiting": 7}))  # fmt: skip
    assert rules["VLLMQueueAboveTarget"]["expr"].endswith("> 7") and rules["VLLMQueueAboveTarget"]["for"] == "10m"
    assert "describe hpa m" in rules["VLLMQueueAboveTarget"]["annotations"]["description"]
    assert rules["VLLMLatencyAboveSLO"]["expr"].endswith("> 2.5")
    assert rules["VLLMTimeToFirstTokenAboveSLO"]["expr"].endswith("> 2.5")
    assert rules["VLLMKVCacheNearlyFull"]["expr"].endswith("> 0.9")
    assert rules["VLLMErrorRateHigh"]["expr"].endswith("> 0.01")
    assert 'model_name="m"' in rules["VLLMQueueAboveTarget"]["expr"]
    assert 'namespace="llm"' in rules["VLLMNoReplicaReady"]["expr"]


def test_the_scraper_picks_the_kind_and_none_renders_none() -> None:
    kinds = {
        scraper: [o["kind"] for o in render(resolve(parse_spec(_spec(monitoring={"scraper": scraper}))))]
        for scraper in ("podmonitoring", "servicemonitor", "none")
    }
    assert "Rules" in kinds["podmonitoring"] and "PrometheusRule" in kinds["servicemonitor"]
    assert not {"Rules", "PrometheusRule"} & set(kinds["none"])
    assert _alerts(_spec(monitoring={"scraper": "podmonitoring", "alerts": False})) == {}
    assert set(alerts.KIND) == {"podmonitoring", "servicemonitor"}
