"""Scraping vLLM's /metrics (PodMonitoring or ServiceMonitor) and a Grafana dashboard ConfigMap.

Metric names are vLLM's; where vLLM renamed one (gpu_cache_usage_perc -> kv_cache_usage_perc,
time_per_output_token -> inter_token_latency) the query asks for both with `or`.
"""

from __future__ import annotations

import json

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import (
    Obj,
    labels,
    meta,
    router_name,
    router_selector,
    selector,
)


def scraper(plan: Plan) -> list[Obj]:
    """PodMonitoring (GKE managed Prometheus) or ServiceMonitor (Prometheus operator) of the engine pods."""
    return _scrapers(plan, plan.name, "engine", selector(plan))


def router_scraper(plan: Plan) -> list[Obj]:
    """The same for the router's pods (its own /metrics: requests, retries, backends)."""
    return _scrapers(plan, router_name(plan), "router", router_selector(plan))


def _scrapers(plan: Plan, name: str, component: str, pods: dict[str, str]) -> list[Obj]:
    # A ServiceMonitor finds Services by label: the engine Service and the client-facing one differ in
    # their component label, so each scrapes its own pods (the client-facing one is the router's, if any).
    mon = plan.spec.monitoring
    endpoint = {"port": "http", "path": "/metrics", "interval": f"{mon.interval_s}s"}
    if mon.scraper == "podmonitoring":
        return [{
            "apiVersion": "monitoring.googleapis.com/v1", "kind": "PodMonitoring",
            "metadata": meta(plan, name, component),
            "spec": {"selector": {"matchLabels": pods}, "endpoints": [endpoint]},
        }]  # fmt: skip
    if mon.scraper == "servicemonitor":
        return [{
            "apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": meta(plan, name, component),
            "spec": {"selector": {"matchLabels": labels(plan, component)}, "endpoints": [endpoint]},
        }]  # fmt: skip
    return []


def _quantile(metric: str, sel: str) -> str:
    return f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{{{sel}}}[5m])))"


def dashboard_json(plan: Plan) -> str:
    """The dashboard, as Grafana's JSON model (sorted keys: byte-identical for the same plan)."""
    sel = f'model_name="{plan.served_name}"'
    panels = [
        ("Queue depth (waiting requests)", f"sum(vllm:num_requests_waiting{{{sel}}})", "short"),
        ("Running requests", f"sum(vllm:num_requests_running{{{sel}}})", "short"),
        ("KV cache usage", f"avg(vllm:kv_cache_usage_perc{{{sel}}} or vllm:gpu_cache_usage_perc{{{sel}}})",
         "percentunit"),
        ("TTFT p95", _quantile("vllm:time_to_first_token_seconds", sel), "s"),
        ("ITL p95", f"{_quantile('vllm:inter_token_latency_seconds', sel)} or "
                    f"{_quantile('vllm:time_per_output_token_seconds', sel)}", "s"),
        ("E2E latency p95", _quantile("vllm:e2e_request_latency_seconds", sel), "s"),
        ("Generated tokens / s", f"sum(rate(vllm:generation_tokens_total{{{sel}}}[1m]))", "short"),
        ("Prompt tokens / s", f"sum(rate(vllm:prompt_tokens_total{{{sel}}}[1m]))", "short"),
        ("Prefix cache hit rate", f"sum(rate(vllm:prefix_cache_hits_total{{{sel}}}[5m])) / "
                                  f"sum(rate(vllm:prefix_cache_queries_total{{{sel}}}[5m]))", "percentunit"),
    ]  # fmt: skip
    model = {
        "title": f"vLLM {plan.name}",
        "uid": f"vllm-fleet-{plan.name}"[:40],
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "panels": [
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "gridPos": {"h": 8, "w": 8, "x": 8 * (i % 3), "y": 8 * (i // 3)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": expr}],
            }
            for i, (title, expr, unit) in enumerate(panels)
        ],
    }
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def dashboard(plan: Plan) -> Obj:
    """ConfigMap picked up by Grafana's dashboard sidecar (label grafana_dashboard=1)."""
    metadata = meta(plan, f"{plan.name}-dashboard", "monitoring")
    metadata["labels"]["grafana_dashboard"] = "1"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {f"{plan.name}.json": dashboard_json(plan)},
    }
