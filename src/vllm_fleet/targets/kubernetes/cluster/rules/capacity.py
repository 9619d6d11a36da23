"""gpu_free / node_fits: the scheduler's own accounting, for preflight."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from vllm_fleet.targets.kubernetes.cluster.rules.base import Obj, _get, _list

# ---------------------------------------------------------------------------------------------
# Capacity: gpu_free, node_fits


_SUFFIXES: dict[str, Decimal] = {
    **{suffix: Decimal(1024) ** (i + 1) for i, suffix in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{suffix: Decimal(1000) ** (i + 1) for i, suffix in enumerate(("k", "M", "G", "T", "P", "E"))},
    **{"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1)},
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity(value: Any) -> Decimal:
    """A resource.Quantity (``"8"``, ``"500m"``, ``"16Gi"``) as a number; unreadable counts as 0."""
    match = _QUANTITY.match(str(value).strip()) if value is not None else None
    if not match or match[2] not in _SUFFIXES:
        return Decimal(0)
    try:
        return Decimal(match[1]) * _SUFFIXES[match[2]]
    except InvalidOperation:
        return Decimal(0)


def _container_request(container: Obj, resource: str) -> Decimal:
    # The API server defaults a missing request to the limit (pkg/apis/core/v1/defaults.go
    # SetDefaults_Pod); recorded manifests may carry only limits, as GPU pods usually do.
    requests = _get(container, "resources.requests", {})
    if resource in requests:
        return quantity(requests[resource])
    return quantity(_get(container, "resources.limits", {}).get(resource))


def _pod_request(pod: Obj, resource: str) -> Decimal:
    """What the scheduler reserves for ``pod`` (pkg/api/v1/resource/helpers.go PodRequests):
    the app containers' sum, plus restartable (sidecar) init containers, against the largest
    one-at-a-time init container seen with the sidecars started before it; then the overhead."""
    total = sum((_container_request(c, resource) for c in _list(pod, "spec.containers")), Decimal(0))
    sidecars = Decimal(0)
    largest_init = Decimal(0)
    for container in _list(pod, "spec.initContainers"):
        request = _container_request(container, resource)
        if container.get("restartPolicy") == "Always":
            total += request  # a native sidecar runs beside the app containers
            sidecars += request
            largest_init = max(largest_init, sidecars)
        else:
            largest_init = max(largest_init, request + sidecars)
    return max(total, largest_init) + quantity(_get(pod, "spec.overhead", {}).get(resource))


def gpu_free(nodes: list[Obj], pods: list[Obj], resource: str = "nvidia.com/gpu") -> dict[str, int]:
    """Free units of ``resource`` per node: allocatable minus the requests of non-terminal pods bound to it.

    Pods in Succeeded or Failed hold nothing (the scheduler's NodeInfo drops them); a terminating
    pod still does until it is gone. Meant for integer (extended) resources; a node never shows
    less than 0 (a stale list can briefly over-count).
    """
    used: dict[str, Decimal] = {}
    for pod in pods:
        node = _get(pod, "spec.nodeName")
        if node and _get(pod, "status.phase") not in ("Succeeded", "Failed"):
            used[node] = used.get(node, Decimal(0)) + _pod_request(pod, resource)
    free = {}
    for node in nodes:
        name = str(_get(node, "metadata.name", ""))
        allocatable = quantity(_get(node, "status.allocatable", {}).get(resource))
        free[name] = max(0, int(allocatable - used.get(name, Decimal(0))))
    return free


# What the NodeUnschedulable plugin treats a cordoned node as (pkg/scheduler/framework/plugins/nodeunschedulable).
_CORDON_TAINT = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def node_fits(node: Obj, selector: dict[str, str], tolerations: list[Obj]) -> bool:
    """Whether a pod with this nodeSelector and these tolerations may be scheduled on ``node``.

    Labels must all match (NodeAffinity's nodeSelector part), every NoSchedule/NoExecute taint must
    be tolerated (TaintToleration; PreferNoSchedule only scores), and a cordoned node fits only a
    pod that tolerates the unschedulable taint (NodeUnschedulable), as DaemonSet pods do.
    """
    labels = _get(node, "metadata.labels", {})
    if any(labels.get(key) != value for key, value in selector.items()):
        return False
    taints = _list(node, "spec.taints")
    if _get(node, "spec.unschedulable") is True:
        taints.append(_CORDON_TAINT)
    hard = (t for t in taints if t.get("effect") in ("NoSchedule", "NoExecute"))
    return all(any(_tolerates(tol, taint) for tol in tolerations) for taint in hard)


def _tolerates(toleration: Obj, taint: Obj) -> bool:
    """k8s.io/api/core/v1 toleration.go ToleratesTaint: effect and key must match where set; Exists
    matches any value, Equal (the default) the same value; an empty key with Exists matches all."""
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("key") and toleration["key"] != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")
