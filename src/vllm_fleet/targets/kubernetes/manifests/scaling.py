"""Autoscaling on vLLM's queue depth, vllm:num_requests_waiting, three ways.

hpa   autoscaling/v2 HPA on the Pods metric `vllm_num_requests_waiting` served by prometheus-adapter
      (adapter rule: seriesQuery 'vllm:num_requests_waiting', name: {as: vllm_num_requests_waiting})
gke   the same HPA on GKE managed Prometheus via the Custom Metrics Stackdriver Adapter, whose metric
      name is `prometheus.googleapis.com|vllm:num_requests_waiting|gauge`
keda  a KEDA ScaledObject with a Prometheus trigger on sum(vllm:num_requests_waiting)
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta

METRIC = {"hpa": "vllm_num_requests_waiting", "gke": "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"}


def autoscaler(plan: Plan) -> list[Obj]:
    """The autoscaling object for scaling.mode (none: nothing)."""
    mode = plan.spec.scaling.mode
    if mode == "none":
        return []
    return [_keda(plan)] if mode == "keda" else [_hpa(plan, METRIC[mode])]


def _target_ref(plan: Plan) -> Obj:
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


def _target_value(plan: Plan) -> str:
    value = plan.spec.scaling.target_waiting
    return str(int(value)) if value == int(value) else f"{int(value * 1000)}m"


def _hpa(plan: Plan, metric: str) -> Obj:
    sc = plan.spec.scaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(plan, plan.name),
        "spec": {
            "scaleTargetRef": _target_ref(plan),
            "minReplicas": sc.min_replicas,
            "maxReplicas": sc.max_replicas,
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": metric},
                "target": {"type": "AverageValue", "averageValue": _target_value(plan)},
            }}],
            "behavior": _behavior(plan),
        },
    }  # fmt: skip


def _keda(plan: Plan) -> Obj:
    sc = plan.spec.scaling
    labels = f'namespace="{plan.spec.kubernetes.namespace}",model_name="{plan.served_name}"'
    query = f"sum(vllm:num_requests_waiting{{{labels}}})"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": meta(plan, plan.name),
        "spec": {
            "scaleTargetRef": {"name": plan.name},
            "minReplicaCount": sc.min_replicas,
            "maxReplicaCount": sc.max_replicas,
            "pollingInterval": 15,
            "cooldownPeriod": sc.scale_down_window_s,
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": _behavior(plan)}},
            "triggers": [{
                "type": "prometheus",
                "metadata": {"serverAddress": sc.prometheus_url, "query": query,
                             "threshold": str(sc.target_waiting)},
            }],
        },
    }  # fmt: skip
