"""The EndpointSlice controller, one pass: a Service's pods as ``discovery.k8s.io/v1`` EndpointSlices.

What it follows (https://kubernetes.io/docs/concepts/services-networking/endpoint-slices/ and
``staging/src/k8s.io/endpointslice/utils.go`` ``podToEndpoint``, ``pkg/controller/endpointslice``):

- Only a Service with a selector gets controller-managed slices, labelled
  ``kubernetes.io/service-name=<service>`` and ``endpointslice.kubernetes.io/managed-by=
  endpointslice-controller.k8s.io`` (plus the Service's own labels), owned by the Service (so the
  garbage collector removes them with it), named ``<service>-<random>`` by ``generateName``.
- A pod is an endpoint once it has an IP and while it has not succeeded or failed; terminating
  pods stay listed (``#conditions``): ``serving`` is the pod's Ready condition, ``terminating``
  that it has a deletionTimestamp, and ``ready`` is ``serving and not terminating`` ("for
  compatibility reasons, ready is never true for terminating endpoints") unless the Service sets
  ``publishNotReadyAddresses``, which makes every endpoint ready.
- At most ``max_endpoints_per_slice`` endpoints a slice (kube-controller-manager's
  ``--max-endpoints-per-slice``, 100 by default); more make more slices.
- Ports: the Service's, ``port`` being the resolved ``targetPort`` (a name looked up in the
  pod's container ports).

Simplified: one address family (IPv4); endpoints are packed in pod-name order, where the real
controller keeps endpoints where they are to limit churn; no ``hostname``, ``zone`` or ``hints``;
the legacy ``v1`` Endpoints object is not written.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .selectors import selector_matches
from .store import Store
from .workloads import owner_ref

MANAGER = "endpointslice-controller"
MANAGED_BY = "endpointslice-controller.k8s.io"
SERVICE_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
KEY = ("discovery.k8s.io", "endpointslices")


def _ready(pod: Mapping[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _endpoint(pod: Mapping[str, Any], publish_not_ready: bool) -> dict[str, Any]:
    serving = _ready(pod)
    terminating = bool(pod["metadata"].get("deletionTimestamp"))
    meta = pod["metadata"]
    out: dict[str, Any] = {
        "addresses": [pod["status"]["podIP"]],
        "conditions": {
            "ready": publish_not_ready or (serving and not terminating),
            "serving": serving,
            "terminating": terminating,
        },
    }
    if (pod.get("spec") or {}).get("nodeName"):
        out["nodeName"] = pod["spec"]["nodeName"]
    out["targetRef"] = {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
    return out


def _ports(service: Mapping[str, Any], pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    named = {
        p["name"]: p["containerPort"]
        for pod in pods[:1]
        for c in (pod.get("spec") or {}).get("containers") or ()
        for p in c.get("ports") or ()
        if p.get("name")
    }
    out = []
    for port in (service.get("spec") or {}).get("ports") or ():
        target = port.get("targetPort", port["port"])
        number = named.get(target) if isinstance(target, str) else int(target)
        if number is None:
            continue  # a name no container port has: the real controller leaves the port out too
        out.append({"name": port.get("name", ""), "port": number, "protocol": port.get("protocol", "TCP")})
    return out


class EndpointSlices:
    """The controller's state: only its setting (slices are found by label each pass)."""

    def __init__(self, store: Store, max_endpoints_per_slice: int = 100) -> None:
        self.store, self.max_endpoints_per_slice = store, max_endpoints_per_slice

    def sync(self) -> None:
        """One pass over every Service: create, update or delete its slices to match its pods."""
        for service in self.store.objects(("", "services")):
            meta = service["metadata"]
            selector = (service.get("spec") or {}).get("selector")
            if not selector or meta.get("deletionTimestamp"):
                continue
            self._service(service, selector)

    def _service(self, service: dict[str, Any], selector: Mapping[str, str]) -> None:
        meta = service["metadata"]
        ns, name = meta["namespace"], meta["name"]
        publish = bool((service.get("spec") or {}).get("publishNotReadyAddresses"))
        pods = [
            p
            for p in self.store.objects(("", "pods"), ns)
            if selector_matches({"matchLabels": dict(selector)}, p["metadata"].get("labels"))
            and (p.get("status") or {}).get("podIP")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ]
        pods.sort(key=lambda p: p["metadata"]["name"])
        endpoints = [_endpoint(p, publish) for p in pods]
        size = self.max_endpoints_per_slice
        chunks = [endpoints[i : i + size] for i in range(0, len(endpoints), size)] or [[]]
        ports = _ports(service, pods)
        labels = {**(meta.get("labels") or {}), SERVICE_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY}
        mine = [
            s
            for s in self.store.objects(KEY, ns)
            if (s["metadata"].get("labels") or {}).get(SERVICE_LABEL) == name
            and (s["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY
        ]
        mine.sort(key=lambda s: s["metadata"]["name"])
        for i, chunk in enumerate(chunks):
            if i < len(mine):

                def write(
                    s: dict[str, Any], chunk: list[dict[str, Any]] = chunk, labels: dict[str, str] = labels
                ) -> None:
                    s["metadata"]["labels"] = labels
                    s["endpoints"] = chunk
                    s["ports"] = ports

                self.store.mutate(KEY, ns, mine[i]["metadata"]["name"], write, manager=MANAGER)
                continue
            self.store.system_create(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "generateName": f"{name}-",
                        "namespace": ns,
                        "labels": labels,
                        "ownerReferences": [owner_ref(service)],
                    },
                    "addressType": "IPv4",
                    "endpoints": chunk,
                    "ports": ports,
                },
                manager=MANAGER,
            )
        for extra in mine[len(chunks) :]:
            self.store.delete_as(KEY, ns, extra["metadata"]["name"])
