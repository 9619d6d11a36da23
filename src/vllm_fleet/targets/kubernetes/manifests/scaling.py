"""Autoscaling on one signal (scaling.metric), three ways (scaling.mode).

metric           series                                      what it says
waiting          vllm:num_requests_waiting                   queue depth (the default: throughput within latency)
running          vllm:num_requests_running                   batch size (lower latency, scales sooner)
gpu-utilization  DCGM_FI_DEV_GPU_UTIL (DCGM exporter)         GPU busy %, per GPU; on GKE the accelerator duty cycle

hpa   autoscaling/v2 HPA through prometheus-adapter: vLLM's gauges as Pods metrics (adapter rule:
      seriesQuery 'vllm:num_requests_waiting', name: {as: vllm_num_requests_waiting}); DCGM's as an External
      metric `dcgm_fi_dev_gpu_util` (the exporter's pod, not ours, carries the series; our pod is in its
      exported_* labels)
gke   the same HPA on GKE managed Prometheus via the Custom Metrics Stackdriver Adapter:
      `prometheus.googleapis.com|vllm:num_requests_waiting|gauge`, or the system metric
      `kubernetes.io|container|accelerator|duty_cycle` as External
keda  a KEDA ScaledObject with a Prometheus trigger on sum(<series>) (KEDA divides by the replicas)

External metric names are lowercased: the HPA does not match upper-case external metric names (issue 16).
The per-replica value compared is plan.derived['scaling_average_value'].
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta

# The series each metric reads in Prometheus (for KEDA, the alerts and the docs).
SERIES = {"waiting": "vllm:num_requests_waiting", "running": "vllm:num_requests_running",
          "gpu-utilization": "DCGM_FI_DEV_GPU_UTIL"}  # fmt: skip
GKE_DUTY_CYCLE = "kubernetes.io|container|accelerator|duty_cycle"


def autoscaler(plan: Plan) -> list[Obj]:
    """The autoscaling object for scaling.mode (none: nothing)."""
    mode = plan.spec.scaling.mode
    if mode == "none":
        return []
    return [_keda(plan)] if mode == "keda" else [_hpa(plan, hpa_metric(plan))]


def external_name(name: str) -> str:
    """An External metric's name as the HPA can match it: lower case (DCGM_FI_DEV_GPU_UTIL does not match)."""
    return name.lower()


def hpa_metric(plan: Plan) -> Obj:
    """The HPA's `metrics[0]` for scaling.metric and scaling.mode hpa or gke."""
    sc, ns = plan.spec.scaling, plan.spec.kubernetes.namespace
    target = {"type": "AverageValue", "averageValue": _quantity(plan.scaling_average_value)}
    if sc.metric != "gpu-utilization":
        series = SERIES[sc.metric]
        name = series.replace(":", "_") if sc.mode == "hpa" else f"prometheus.googleapis.com|{series}|gauge"
        return {"type": "Pods", "pods": {"metric": {"name": name}, "target": target}}
    if sc.mode == "gke":
        labels = {"resource.labels.namespace_name": ns, "resource.labels.container_name": "vllm"}
        metric: Obj = {"name": external_name(GKE_DUTY_CYCLE), "selector": {"matchLabels": labels}}
    else:
        labels = {"exported_namespace": ns, "exported_container": "vllm"}
        metric = {"name": external_name(SERIES["gpu-utilization"]), "selector": {"matchLabels": labels}}
    return {"type": "External", "external": {"metric": metric, "target": target}}


def _target_ref(plan: Plan) -> Obj:
    if plan.spec.resources.nodes > 1:  # LWS has a scale subresource; the HPA selects its leaders
        return {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": plan.name}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name}


def _behavior(plan: Plan) -> Obj:
    sc = plan.spec.scaling
    # Scale down one replica per minute: a GPU replica is slow to come back.
    return {
        "scaleUp": {"stabilizationWindowSeconds": sc.scale_up_window_s},
        "scaleDown": {
            "stabilizationWindowSeconds": sc.scale_down_window_s,
            "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
        },
    }


def _quantity(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{int(value * 1000)}m"


def _hpa(plan: Plan, metric: Obj) -> Obj:
    sc = plan.spec.scaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(plan, plan.name),
        "spec": {
            "scaleTargetRef": _target_ref(plan),
            "minReplicas": sc.min_replicas,
            "maxReplicas": sc.max_replicas,
            "metrics": [metric],
            "behavior": _behavior(plan),
        },
    }


def keda_query(plan: Plan) -> str:
    """KEDA's Prometheus query: the sum over the deployment's pods (KEDA divides by the replicas)."""
    ns, metric = plan.spec.kubernetes.namespace, plan.spec.scaling.metric
    if metric == "gpu-utilization":
        return f'sum({SERIES[metric]}{{exported_namespace="{ns}",exported_pod=~"{plan.name}-.*"}})'
    return f'sum({SERIES[metric]}{{namespace="{ns}",model_name="{plan.served_name}"}})'


def _keda(plan: Plan) -> Obj:
    sc = plan.spec.scaling
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(plan, plan.name),
        "spec": {
            "scaleTargetRef": {"name": plan.name} | (
                {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet"}
                if plan.spec.resources.nodes > 1 else {}
            ),
            "minReplicaCount": sc.min_replicas,
            "maxReplicaCount": sc.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": sc.scale_down_window_s,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(plan)}},
            "triggers": [{
                "type": "prometheus",
                "metadata": {"serverAddress": sc.prometheus_url, "query": keda_query(plan),
                             "threshold": f"{plan.scaling_average_value:g}"},
            }],
        },
    }  # fmt: skip
