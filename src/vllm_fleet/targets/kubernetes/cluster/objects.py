"""Rendered manifests (plain dicts) as lightkube objects, in apply order, carrying the inventory.

The renderer knows nothing of lightkube; here each dict becomes a typed object (custom resources
become generic ones, registered from one table), objects get the inventory annotation that lets a
later `up` prune what it no longer renders and `down` delete exactly what was applied, and the
inventory itself is a ConfigMap beside them (as kpt and cli-utils keep theirs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from vllm_fleet.plan import Plan

Obj = dict[str, Any]
INVENTORY_ANNOTATION = "vllm-fleet.io/inventory"
WEIGHTS_KEPT_ANNOTATION = "vllm-fleet.io/keep-on-down"  # the weights cache outlives `down` (unless --purge)

# Custom resources we render: (group, kind) -> plural. Their CRD is named PLURAL.GROUP.
CUSTOM_RESOURCES: dict[tuple[str, str], str] = {
    ("monitoring.googleapis.com", "PodMonitoring"): "podmonitorings",
    ("monitoring.coreos.com", "ServiceMonitor"): "servicemonitors",
    ("keda.sh", "ScaledObject"): "scaledobjects",
    ("gateway.networking.k8s.io", "Gateway"): "gateways",
    ("gateway.networking.k8s.io", "HTTPRoute"): "httproutes",
    ("networking.gke.io", "HealthCheckPolicy"): "healthcheckpolicies",
    ("monitoring.coreos.com", "PrometheusRule"): "prometheusrules",
    ("monitoring.googleapis.com", "Rules"): "rules",
    ("leaderworkerset.x-k8s.io", "LeaderWorkerSet"): "leaderworkersets",
    ("inference.networking.k8s.io", "InferencePool"): "inferencepools",
}
# Apply order (the dependency order); deletion runs it backwards. Unknown kinds go last.
APPLY_ORDER = (
    "Namespace", "ServiceAccount", "StorageClass", "PersistentVolume", "PersistentVolumeClaim", "Secret",
    "ConfigMap", "Role", "RoleBinding", "Job", "Deployment", "LeaderWorkerSet", "Service", "PodDisruptionBudget",
    "NetworkPolicy", "HorizontalPodAutoscaler", "ScaledObject", "PodMonitoring", "ServiceMonitor", "PrometheusRule",
    "Rules", "InferencePool", "Gateway", "HTTPRoute", "HealthCheckPolicy",
)  # fmt: skip
CLUSTER_SCOPED = frozenset({"Namespace", "StorageClass", "PersistentVolume", "CustomResourceDefinition"})


@dataclass(frozen=True, order=True)
class Ref:
    """Which object: enough to get or delete it."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, obj: Obj) -> Ref:
        meta = obj["metadata"]
        return cls(
            obj["apiVersion"],
            obj["kind"],
            meta["name"],
            None if obj["kind"] in CLUSTER_SCOPED else meta.get("namespace"),
        )

    @property
    def group(self) -> str:
        return self.api_version.rsplit("/", 1)[0] if "/" in self.api_version else ""

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"

    def to_dict(self) -> dict[str, str | None]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "namespace": self.namespace}


def crd_name(group: str, kind: str) -> str | None:
    """The CRD a custom resource needs (PLURAL.GROUP), or None for a built-in kind."""
    plural = CUSTOM_RESOURCES.get((group, kind))
    return f"{plural}.{group}" if plural else None


def inventory_name(plan: Plan) -> str:
    return f"{plan.name}-inventory"


def inventory_key(plan: Plan) -> str:
    return f"{plan.spec.kubernetes.namespace}/{plan.name}"


def ordered(objects: list[Obj]) -> list[Obj]:
    """``objects`` in apply order (stable within a kind)."""
    rank = {kind: i for i, kind in enumerate(APPLY_ORDER)}
    return sorted(objects, key=lambda o: rank.get(o["kind"], len(rank)))


def with_inventory(plan: Plan, obj: Obj) -> Obj:
    """``obj`` annotated with the inventory it belongs to (a copy; the rendered dict is not changed)."""
    out = json.loads(json.dumps(obj))
    out["metadata"].setdefault("annotations", {})[INVENTORY_ANNOTATION] = inventory_key(plan)
    if obj["kind"] == "PersistentVolumeClaim":
        out["metadata"]["annotations"][WEIGHTS_KEPT_ANNOTATION] = "true"
    return out


def inventory_object(plan: Plan, refs: list[Ref]) -> Obj:
    """The ConfigMap that lists what `up` applied, for prune and `down`."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": inventory_name(plan),
            "namespace": plan.spec.kubernetes.namespace,
            "labels": {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/managed-by": "vllm-fleet"},
            "annotations": {INVENTORY_ANNOTATION: inventory_key(plan)},
        },
        "data": {"objects": json.dumps([r.to_dict() for r in sorted(refs)], indent=1)},
    }


def read_inventory(configmap: Obj | None) -> list[Ref]:
    """The refs an inventory ConfigMap lists (none when it does not exist or is unreadable)."""
    if not configmap:
        return []
    try:
        rows = json.loads((configmap.get("data") or {}).get("objects", "[]"))
        return [Ref(r["apiVersion"], r["kind"], r["name"], r.get("namespace")) for r in rows]
    except (ValueError, KeyError, TypeError):
        return []


def resource_class(ref: Ref) -> Any:
    """The lightkube resource class of ``ref``'s kind (custom resources as generic ones)."""
    from lightkube.core.resource_registry import resource_registry
    from lightkube.generic_resource import create_namespaced_resource

    plural = CUSTOM_RESOURCES.get((ref.group, ref.kind))
    if plural is not None:
        version = ref.api_version.rsplit("/", 1)[1]
        return create_namespaced_resource(ref.group, version, ref.kind, plural)
    return resource_registry.load(ref.api_version, ref.kind)


def to_resource(obj: Obj) -> Any:
    """``obj`` as a lightkube object."""
    from lightkube import codecs

    resource_class(Ref.of(obj))  # registers a custom resource's generic class before from_dict looks it up
    return codecs.from_dict(obj)
