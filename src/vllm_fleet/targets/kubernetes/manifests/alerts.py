"""Alert rules beside the dashboard (issue 16): PrometheusRule (Prometheus operator, scraper servicemonitor)
or Rules (GKE managed Prometheus, scraper podmonitoring), the same groups in both.

Thresholds come from the Plan: the queue alert fires above the autoscaler's target (scaling.target_waiting),
the latency alerts above the spec's SLO (slo.p95_latency_s). Every alert's description says what to do.
vLLM metric names are the installed vLLM's (a test reads them from its metrics code); restarts and ready
replicas come from kube-state-metrics (kube-prometheus-stack ships it; on GKE enable the managed
kube-state-metrics package), the only source of pod and workload state in Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta

KV_CACHE_FULL = 0.9  # fraction of the KV cache in use: above it, requests queue or get preempted
ERROR_RATE = 0.01  # fraction of finished requests that ended in an engine error
RESTARTS_15M = 2  # engine container restarts in 15 minutes
API = {"servicemonitor": "monitoring.coreos.com/v1", "podmonitoring": "monitoring.googleapis.com/v1"}
KIND = {"servicemonitor": "PrometheusRule", "podmonitoring": "Rules"}


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def _p95(metric: str, sel: str) -> str:
    return f"histogram_quantile(0.95, sum by (le) (rate({metric}_bucket{{{sel}}}[5m])))"


def alert_list(plan: Plan) -> list[Alert]:
    """The alerts for ``plan``, thresholds from it."""
    spec = plan.spec
    ns, name = spec.kubernetes.namespace, plan.name
    sel = f'namespace="{ns}",model_name="{plan.served_name}"'
    slo = spec.slo.p95_latency_s
    # The queue alert follows the autoscaler's target when it scales on the queue, else target_waiting.
    target = plan.scaling_target if spec.scaling.metric == "waiting" else spec.scaling.target_waiting
    scale_fix = (
        f"the autoscaler is at its limit or not acting: read `kubectl -n {ns} describe hpa {name}` (KEDA: the "
        "ScaledObject), then raise scaling.max_replicas or add GPU nodes"
        if spec.scaling.mode != "none"
        else "add replicas (replicas or scaling.mode) or GPU nodes"
    )
    return [
        Alert("VLLMQueueAboveTarget", f"avg(vllm:num_requests_waiting{{{sel}}}) > {target:g}", "10m", "warning",
              f"{name}: more than {target:g} requests waiting per replica for 10 minutes",
              f"The queue per replica is above the autoscaler's target (scaling.target_waiting {target:g}): "
              f"{scale_fix}."),
        Alert("VLLMKVCacheNearlyFull", f"max(vllm:kv_cache_usage_perc{{{sel}}}) > {KV_CACHE_FULL:g}", "10m",
              "warning", f"{name}: KV cache above {KV_CACHE_FULL:.0%} for 10 minutes",
              "Requests will wait for cache blocks or be preempted: add replicas, or lower engine.max_num_seqs "
              "or engine.max_model_len, or raise engine.gpu_memory_utilization if the GPU has room."),
        Alert("VLLMTimeToFirstTokenAboveSLO", f"{_p95('vllm:time_to_first_token_seconds', sel)} > {slo:g}", "10m",
              "warning", f"{name}: p95 time to first token above the SLO ({slo:g} s)",
              "Prefill or queueing is slow: check the queue alert and the dashboard's queue depth; add replicas, "
              "enable engine.enable_prefix_caching for shared prompts, or shorten prompts."),
        Alert("VLLMLatencyAboveSLO", f"{_p95('vllm:e2e_request_latency_seconds', sel)} > {slo:g}", "10m",
              "critical", f"{name}: p95 end-to-end latency above the SLO ({slo:g} s, slo.p95_latency_s)",
              "The promise verify checks is broken in production: add replicas (or lower scaling.target_waiting "
              "so the autoscaler acts sooner), then run `vllm-fleet bench SPEC --recommend-hpa` to size the "
              "target again."),
        Alert("VLLMErrorRateHigh",
              f'sum(rate(vllm:request_success_total{{{sel},finished_reason="error"}}[5m])) / '
              f"sum(rate(vllm:request_success_total{{{sel}}}[5m])) > {ERROR_RATE:g}", "5m", "critical",
              f"{name}: more than {ERROR_RATE:.0%} of requests end in an engine error",
              f"Read the engine's log: `kubectl -n {ns} logs deploy/{name} -c vllm`, then run "
              "`vllm-fleet doctor SPEC` for the cause and its fix."),
        Alert("VLLMPodsRestarting",
              f'increase(kube_pod_container_status_restarts_total{{namespace="{ns}",pod=~"{name}-.*",'
              f'container="vllm"}}[15m]) >= {RESTARTS_15M}', "0m", "warning",
              f"{name}: an engine container restarted {RESTARTS_15M}+ times in 15 minutes",
              f"Run `vllm-fleet doctor SPEC` (the engine's last words, OOM kills, probe failures), or read "
              f"`kubectl -n {ns} logs POD -c vllm --previous`."),
        Alert("VLLMNoReplicaReady", _ready_expr(plan), "5m", "critical",
              f"{name}: no replica is ready", "Clients get errors now: run `vllm-fleet doctor SPEC` "
              "(or `vllm-fleet status SPEC`) for why the pods are not ready."),
    ]  # fmt: skip


def _ready_expr(plan: Plan) -> str:
    ns, name = plan.spec.kubernetes.namespace, plan.name
    if plan.spec.resources.nodes > 1:  # a LeaderWorkerSet's leaders are the StatefulSet named after it
        return f'max(kube_statefulset_status_replicas_ready{{namespace="{ns}",statefulset="{name}"}}) < 1'
    return f'max(kube_deployment_status_replicas_available{{namespace="{ns}",deployment="{name}"}}) < 1'


def rules(plan: Plan) -> list[Obj]:
    """The PrometheusRule or Rules object for monitoring.scraper (none, or alerts off: nothing)."""
    mon = plan.spec.monitoring
    if mon.scraper not in KIND or not mon.alerts:
        return []
    group: Obj = {"name": f"vllm-fleet-{plan.name}", "interval": f"{mon.interval_s * 2}s", "rules": [
        {"alert": a.name, "expr": a.expr, "for": a.for_, "labels": {"severity": a.severity},
         "annotations": {"summary": a.summary, "description": a.description}}
        for a in alert_list(plan)
    ]}  # fmt: skip
    return [{
        "apiVersion": API[mon.scraper], "kind": KIND[mon.scraper],
        "metadata": meta(plan, f"{plan.name}-alerts", "monitoring"), "spec": {"groups": [group]},
    }]  # fmt: skip
