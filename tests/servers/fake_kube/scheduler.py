"""The default scheduler, one pass: bind each pending pod to a feasible node or say why none is.

Filters, in the default profile's order (``pkg/scheduler/apis/config/v1/default_plugins.go``), the
first one that fails decides a node's reason:

1. NodeUnschedulable: ``node(s) were unschedulable`` (plugins/nodeunschedulable).
2. TaintToleration, NoSchedule/NoExecute taints: ``node(s) had untolerated taint {key: value}``
   (plugins/tainttoleration/taint_toleration.go; later releases print ``untolerated taint(s)``).
3. NodeAffinity, nodeSelector and required node affinity: ``node(s) didn't match Pod's node
   affinity/selector`` (plugins/nodeaffinity).
4. NodeResourcesFit: ``Too many pods`` and one ``Insufficient <resource>`` per resource short
   (plugins/noderesources/fit.go), free = allocatable minus the requests of the node's
   non-terminal pods; a pod's request counts init containers as the scheduler does
   (``staging/src/k8s.io/component-helpers/resource/helpers.go`` PodRequests: the larger of the app
   containers' sum and each init container, with restartable (sidecar) init containers added).
5. VolumeBinding (PreFilter, before any node): a missing PVC, one being deleted, or an unbound one
   of an Immediate class stop the pod for every node; a WaitForFirstConsumer claim gets the chosen
   node as ``volume.kubernetes.io/selected-node`` and the pod binds once the claim is bound.

The message is ``FitError.Error()`` (``pkg/scheduler/framework/types.go``): ``0/N nodes are
available: <histogram>. preemption: 0/N nodes are available: <histogram>.``, with the preemption part
as DefaultPreemption words it (``pkg/scheduler/framework/preemption/preemption.go``): nodes that
failed an UnschedulableAndUnresolvable filter (1-3, volumes) are ``Preemption is not helpful for
scheduling``; the others ``No preemption victims found for incoming pod`` (priorities are not
modelled, so no pod is ever a victim). No node at all: ``no nodes available to schedule pods``.
Among feasible nodes the least allocated (cpu and memory) wins, then the name.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

from . import events
from .selectors import node_selector_terms_match, tolerates
from .store import Store, now

_QUANTITY = re.compile(r"^([+-]?[0-9]*\.?[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE]|)$")
_FACTORS: dict[str, Fraction] = {
    "": Fraction(1),
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
    **{s: Fraction(2 ** (10 * (i + 1))) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}
SCHEDULER = "default-scheduler"
RESOURCE_ORDER = ("cpu", "memory", "ephemeral-storage")


def quantity(value: object) -> Fraction:
    """A resource.Quantity string (``500m``, ``16Gi``, ``1e3``, ``2``) as an exact number."""
    if isinstance(value, int | float):
        return Fraction(value)
    m = _QUANTITY.match(str(value).strip())
    if m is None:
        raise ValueError(f"quantities must match the regular expression: {value!r}")
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * Fraction(10) ** int(suffix[1:])
    return number * _FACTORS[suffix]


def _requests(container: Mapping[str, Any]) -> dict[str, Fraction]:
    res = container.get("resources") or {}
    merged = {**(res.get("limits") or {}), **(res.get("requests") or {})}  # requests default to limits
    return {k: quantity(v) for k, v in merged.items()}


def _add(a: dict[str, Fraction], b: Mapping[str, Fraction]) -> None:
    for k, v in b.items():
        a[k] = a.get(k, Fraction(0)) + v


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Fraction]:
    """PodRequests: max(sum of app containers + sidecars, each init container + the sidecars before it) + overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, Fraction] = {}
    for c in spec.get("containers") or ():
        _add(total, _requests(c))
    sidecars: dict[str, Fraction] = {}
    init_max: dict[str, Fraction] = {}
    for c in spec.get("initContainers") or ():
        req = _requests(c)
        if c.get("restartPolicy") == "Always":
            _add(sidecars, req)
            need = dict(sidecars)
        else:
            need = dict(sidecars)
            _add(need, req)
        for k, v in need.items():
            init_max[k] = max(init_max.get(k, Fraction(0)), v)
    _add(total, sidecars)
    for k, v in init_max.items():
        total[k] = max(total.get(k, Fraction(0)), v)
    _add(total, {k: quantity(v) for k, v in (spec.get("overhead") or {}).items()})
    return total


def _terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def node_usage(store: Store) -> dict[str, tuple[dict[str, Fraction], int]]:
    """Per node: the summed requests and the number of its non-terminal pods."""
    usage: dict[str, tuple[dict[str, Fraction], int]] = {}
    for pod in store.objects(("", "pods")):
        node = (pod.get("spec") or {}).get("nodeName")
        if node and not _terminal(pod):
            used, count = usage.get(node, ({}, 0))
            _add(used, pod_requests(pod))
            usage[node] = (used, count + 1)
    return usage


def _filter(pod: Mapping[str, Any], node: Mapping[str, Any], used: Mapping[str, Fraction], count: int) -> list[str]:
    """The reasons ``node`` does not fit ``pod`` (empty: it fits); resolvable reasons start with Insufficient/Too."""
    spec, nspec = pod.get("spec") or {}, node.get("spec") or {}
    tolerations = spec.get("tolerations") or []
    if nspec.get("unschedulable") and not tolerates(
        tolerations, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}
    ):
        return ["node(s) were unschedulable"]
    for taint in nspec.get("taints") or ():
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(tolerations, taint):
            return [f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"]
    labels = (node.get("metadata") or {}).get("labels") or {}
    selector = spec.get("nodeSelector") or {}
    required = (
        ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        or {}
    ).get("nodeSelectorTerms")
    if any(labels.get(k) != v for k, v in selector.items()) or (
        required is not None and not node_selector_terms_match(required, node)
    ):
        return ["node(s) didn't match Pod's node affinity/selector"]
    allocatable = {k: quantity(v) for k, v in ((node.get("status") or {}).get("allocatable") or {}).items()}
    reasons = []
    if count + 1 > allocatable.get("pods", Fraction(110)):
        reasons.append("Too many pods")
    want = pod_requests(pod)
    ordered = [r for r in RESOURCE_ORDER if r in want] + sorted(r for r in want if r not in RESOURCE_ORDER)
    for name in ordered:
        if name == "pods" or want[name] <= 0:
            continue
        if want[name] > allocatable.get(name, Fraction(0)) - used.get(name, Fraction(0)):
            reasons.append(f"Insufficient {name}")
    return reasons


def _histogram(reasons: Mapping[str, int]) -> str:
    return ", ".join(sorted(f"{n} {r}" for r, n in reasons.items()))


def fit_error(num_nodes: int, per_node: Mapping[str, list[str]], prefilter: str | None = None) -> str:
    """``FitError.Error()`` with DefaultPreemption's PostFilter message."""
    message = f"0/{num_nodes} nodes are available:"
    if prefilter:
        message += f" {prefilter}."
        preemption = {"Preemption is not helpful for scheduling": num_nodes}
    else:
        counts: dict[str, int] = {}
        preemption = {}
        for reasons in per_node.values():
            for r in reasons:
                counts[r] = counts.get(r, 0) + 1
            resolvable = bool(reasons) and all(r.startswith(("Insufficient ", "Too many pods")) for r in reasons)
            why = (
                "No preemption victims found for incoming pod"
                if resolvable
                else "Preemption is not helpful for scheduling"
            )
            preemption[why] = preemption.get(why, 0) + 1
        message += f" {_histogram(counts)}."
    return f"{message} preemption: 0/{num_nodes} nodes are available: {_histogram(preemption)}."


def _volume_prefilter(store: Store, pod: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """(PreFilter failure message, WaitForFirstConsumer claims still unbound)."""
    namespace = pod["metadata"]["namespace"]
    waiting = []
    for vol in (pod.get("spec") or {}).get("volumes") or ():
        claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
        if not claim:
            continue
        pvc = store.get(("", "persistentvolumeclaims"), namespace, claim)
        if pvc is None:
            return f'persistentvolumeclaim "{claim}" not found', []
        if pvc["metadata"].get("deletionTimestamp"):
            return f'persistentvolumeclaim "{claim}" is being deleted', []
        if (pvc.get("status") or {}).get("phase") == "Bound":
            continue
        sc_name = (pvc.get("spec") or {}).get("storageClassName")
        sc = store.get(("storage.k8s.io", "storageclasses"), "", sc_name) if sc_name else None
        if sc is not None and sc.get("volumeBindingMode") == "WaitForFirstConsumer":
            waiting.append(claim)
        else:
            return "pod has unbound immediate PersistentVolumeClaims", []
    return None, waiting


def _set_condition(pod: dict[str, Any], cond: dict[str, Any]) -> None:
    """UpdatePodCondition: lastTransitionTime moves only when the status does."""
    conditions = pod.setdefault("status", {}).setdefault("conditions", [])
    for i, existing in enumerate(conditions):
        if existing.get("type") == cond["type"]:
            if existing.get("status") == cond["status"]:
                cond["lastTransitionTime"] = existing.get("lastTransitionTime")
            conditions[i] = {**existing, **cond}
            return
    conditions.append(cond)


def _score(node: Mapping[str, Any], used: Mapping[str, Fraction]) -> tuple[Fraction, str]:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    fraction = Fraction(0)
    for name in ("cpu", "memory"):
        total = quantity(allocatable.get(name, 0))
        if total > 0:
            fraction += used.get(name, Fraction(0)) / total
    return fraction, node["metadata"]["name"]


def schedule(store: Store) -> None:
    """One scheduling pass over the pending pods, oldest first."""
    nodes = store.objects(("", "nodes"))
    usage = node_usage(store)
    pending = [
        p
        for p in store.objects(("", "pods"))
        if not (p.get("spec") or {}).get("nodeName")
        and not p["metadata"].get("deletionTimestamp")
        and (p.get("spec") or {}).get("schedulerName", SCHEDULER) == SCHEDULER
        and (p.get("status") or {}).get("phase", "Pending") == "Pending"
    ]
    pending.sort(key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))
    for pod in pending:
        meta = pod["metadata"]
        if (pod.get("spec") or {}).get("schedulingGates"):
            message = "Scheduling is blocked due to non-empty scheduling gates"
            _fail(store, pod, "SchedulingGated", message, event=False)
            continue
        prefilter, waiting = _volume_prefilter(store, pod)
        if not nodes:
            _fail(store, pod, "Unschedulable", "no nodes available to schedule pods")
            continue
        if prefilter:
            _fail(store, pod, "Unschedulable", fit_error(len(nodes), {}, prefilter))
            continue
        per_node = {}
        for node in nodes:
            used, count = usage.get(node["metadata"]["name"], ({}, 0))
            per_node[node["metadata"]["name"]] = _filter(pod, node, used, count)
        feasible = [n for n in nodes if not per_node[n["metadata"]["name"]]]
        if not feasible:
            _fail(store, pod, "Unschedulable", fit_error(len(nodes), per_node))
            continue
        best = min(feasible, key=lambda n: _score(n, usage.get(n["metadata"]["name"], ({}, 0))[0]))
        node_name = best["metadata"]["name"]
        if waiting:
            for claim in waiting:

                def select(pvc: dict[str, Any], node_name: str = node_name) -> None:
                    pvc["metadata"].setdefault("annotations", {})["volume.kubernetes.io/selected-node"] = node_name

                store.mutate(("", "persistentvolumeclaims"), meta["namespace"], claim, select, manager="kube-scheduler")
            continue
        used, count = usage.get(node_name, ({}, 0))
        _add(used, pod_requests(pod))
        usage[node_name] = (used, count + 1)
        _bind(store, pod, node_name)


def _bind(store: Store, pod: Mapping[str, Any], node_name: str) -> None:
    """pods/binding (``pkg/registry/core/pod/storage/storage.go`` assignPod): nodeName and PodScheduled=True."""
    meta = pod["metadata"]

    def bind(p: dict[str, Any]) -> None:
        p["spec"]["nodeName"] = node_name
        cond = {"type": "PodScheduled", "status": "True", "lastProbeTime": None, "lastTransitionTime": now()}
        _set_condition(p, cond)
        for c in p["status"]["conditions"]:
            if c["type"] == "PodScheduled":
                c.pop("reason", None)
                c.pop("message", None)

    bound = store.mutate(("", "pods"), meta["namespace"], meta["name"], bind, manager="kube-scheduler")
    if bound is not None:
        message = f"Successfully assigned {meta['namespace']}/{meta['name']} to {node_name}"
        events.emit(store, bound, "Normal", "Scheduled", message, SCHEDULER, action="Binding")


def _fail(store: Store, pod: Mapping[str, Any], reason: str, message: str, *, event: bool = True) -> None:
    """PodScheduled=False with the reason, and a FailedScheduling event (aggregated when repeated).

    A pod that fails again the same way is retried with the scheduler's backoff (1 s doubling to
    10 s: podInitialBackoffSeconds, podMaxBackoffSeconds), so the repeat event comes at that pace;
    a different outcome is recorded at once (a cluster event requeues the pod immediately).
    """
    meta = pod["metadata"]
    memo = store.memo.setdefault("scheduler", {})
    last = memo.get(meta["uid"])
    stamp = time.monotonic()
    if last is not None and last[0] == message and stamp - last[1] < last[2]:
        return
    backoff = min(last[2] * 2, 10.0) if last is not None and last[0] == message else 1.0
    memo[meta["uid"]] = (message, stamp, backoff)

    def mark(p: dict[str, Any]) -> None:
        cond = {
            "type": "PodScheduled",
            "status": "False",
            "reason": reason,
            "message": message,
            "lastProbeTime": None,
            "lastTransitionTime": now(),
        }
        _set_condition(p, cond)

    marked = store.mutate(("", "pods"), meta["namespace"], meta["name"], mark, manager="kube-scheduler")
    if marked is not None and event:
        events.emit(store, marked, "Warning", "FailedScheduling", message, SCHEDULER, action="Scheduling")
