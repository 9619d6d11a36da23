"""What the API server does to an object on create and update before storing it (the registry strategies).

Only what clients and the fake's own controllers read is modelled, each after its source:

- ObjectMeta: ``name`` required (or ``generateName``) and its DNS format
  (``staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go``, ``util/validation/validation.go``).
- Status subresource: a write to the main resource keeps ``.status``; create clears it (the
  ``PrepareForCreate``/``PrepareForUpdate`` of ``pkg/registry/*/strategy.go``; Nodes keep it on create).
- ``metadata.generation``: 1 on create, +1 when ``.spec`` changes (every change but metadata and
  status for custom resources), and when deletion starts.
- Defaults from ``pkg/apis/core/v1/defaults.go``, ``pkg/apis/apps/v1/defaults.go`` and
  ``pkg/apis/batch/v1/defaults.go`` for the fields listed in ``apply_defaults`` (not every default).
- Admission: ``DefaultStorageClass`` (a PVC without a class gets the default one) and the Job
  selector generated from its uid (``pkg/registry/batch/job/strategy.go``).

Schemas are not validated (a real server rejects unknown fields under strict field validation
and wrong types always): the fake stores what it is given.
"""

from __future__ import annotations

import base64
import copy
import re
from collections.abc import Callable, Mapping
from typing import Any

from .errors import invalid
from .resources import ResourceType

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and "
    "end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
WORKLOAD_KINDS = {"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"}


def validate_name(rt: ResourceType, obj: Mapping[str, Any]) -> None:
    """422 Invalid when the name is missing or not the DNS name its type requires."""
    name = (obj.get("metadata") or {}).get("name") or ""
    if not name:
        field = ("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
        raise invalid(rt.kind, rt.group, "", [field])
    # Namespaces are DNS-1123 labels, Services DNS-1035 labels (pkg/apis/core/validation/validation.go);
    # custom resources and most others DNS-1123 subdomains.
    if rt.kind == "Namespace":
        pattern, msg, limit = _LABEL, _LABEL_MSG, 63
    elif rt.kind == "Service" and not rt.group:
        pattern, msg, limit = _DNS1035, _DNS1035_MSG, 63
    elif rt.kind in ("Event", "SelfSubjectAccessReview") or (rt.custom and ":" in name):
        return
    else:
        pattern, msg, limit = _SUBDOMAIN, _SUBDOMAIN_MSG, 253
    if len(name) > limit:
        detail = f'Invalid value: "{name}": must be no more than {limit} characters'
        raise invalid(rt.kind, rt.group, name, [("metadata.name", "FieldValueInvalid", detail)])
    if not pattern.match(name):
        raise invalid(
            rt.kind, rt.group, name, [("metadata.name", "FieldValueInvalid", f'Invalid value: "{name}": {msg}')]
        )


GENERATION_KINDS = frozenset(
    {
        "Deployment",
        "ReplicaSet",
        "StatefulSet",
        "DaemonSet",
        "Job",
        "CronJob",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Ingress",
        "CustomResourceDefinition",
    }
)


def has_generation(rt: ResourceType, obj: Mapping[str, Any]) -> bool:
    """The types whose strategy sets metadata.generation (and every custom resource)."""
    return rt.custom or rt.kind in GENERATION_KINDS


def generation_changed(rt: ResourceType, old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether an update bumps metadata.generation."""
    if rt.custom:
        strip = ("metadata", "status")
        return {k: v for k, v in old.items() if k not in strip} != {k: v for k, v in new.items() if k not in strip}
    return old.get("spec") != new.get("spec")


def qos_class(pod: Mapping[str, Any]) -> str:
    """``pkg/apis/core/helper/qos``: Guaranteed (cpu and memory limits = requests everywhere), Burstable, BestEffort."""
    containers = [
        *((pod.get("spec") or {}).get("containers") or ()),
        *((pod.get("spec") or {}).get("initContainers") or ()),
    ]
    any_set, guaranteed = False, True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        any_set = any_set or bool(req) or bool(lim)
        for name in ("cpu", "memory"):
            if name not in lim or req.get(name, lim[name]) != lim[name]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


def _default_container(c: dict[str, Any]) -> None:
    image = c.get("image") or ""
    tag = image.rsplit("/", 1)[-1]
    if "imagePullPolicy" not in c:
        latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
        c["imagePullPolicy"] = "Always" if latest else "IfNotPresent"
    c.setdefault("terminationMessagePath", "/dev/termination-log")
    c.setdefault("terminationMessagePolicy", "File")
    res = c.setdefault("resources", {})
    # "If limits are specified but requests are not, requests default to limits" (SetDefaults_Pod).
    for name, value in (res.get("limits") or {}).items():
        res.setdefault("requests", {}).setdefault(name, value)


def default_pod_spec(spec: dict[str, Any]) -> None:
    """The pod-spec defaults the fake's scheduler and kubelet read (``SetDefaults_PodSpec``, ``SetDefaults_Pod``)."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or ():
            _default_container(c)


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> None:
    """Defaulting on every write, as the real decoder does (idempotent)."""
    if rt.custom:
        return
    kind, spec = rt.kind, obj.get("spec")
    if kind == "Pod" and isinstance(spec, dict):
        default_pod_spec(spec)
    if kind in WORKLOAD_KINDS and isinstance(spec, dict):
        template = spec.get("template")
        if isinstance(template, dict) and isinstance(template.get("spec"), dict):
            default_pod_spec(template["spec"])
    if kind in ("Deployment", "ReplicaSet", "StatefulSet") and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
    if kind == "Deployment" and isinstance(spec, dict):
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("progressDeadlineSeconds", 600)
    if kind == "Job" and isinstance(spec, dict):
        if spec.get("completions") is None and spec.get("parallelism") is None:
            spec["completions"], spec["parallelism"] = 1, 1
        spec.setdefault("parallelism", 1)
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completionMode", "NonIndexed")
        spec.setdefault("suspend", False)
    if kind == "Service" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or ():
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
    if kind == "Secret":
        obj.setdefault("type", "Opaque")
        # stringData is write-only: merged into data (pkg/apis/core/v1/conversion.go Convert_v1_Secret_To_core_Secret)
        for key, value in (obj.pop("stringData", None) or {}).items():
            obj.setdefault("data", {})[key] = base64.b64encode(str(value).encode()).decode()
    if kind == "PersistentVolumeClaim" and isinstance(spec, dict):
        spec.setdefault("volumeMode", "Filesystem")
    if kind == "StorageClass":
        obj.setdefault("reclaimPolicy", "Delete")
        obj.setdefault("volumeBindingMode", "Immediate")
    if kind == "Namespace":
        name = (obj.get("metadata") or {}).get("name")
        obj.setdefault("metadata", {}).setdefault("labels", {})["kubernetes.io/metadata.name"] = name


def prepare_create(
    rt: ResourceType,
    obj: dict[str, Any],
    *,
    find: Callable[[str, str], list[dict[str, Any]]],
    next_ip: Callable[[], str],
) -> None:
    """Clear status where a subresource owns it and set what the create strategy sets."""
    if rt.status and rt.kind != "Node":
        obj.pop("status", None)
    kind, meta = rt.kind, obj["metadata"]
    if rt.custom:
        return
    if kind == "Pod":
        obj.setdefault("spec", {}).setdefault("serviceAccountName", "default")  # ServiceAccount admission
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj)}
    elif kind == "Namespace":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
    elif kind == "PersistentVolumeClaim":
        spec = obj.setdefault("spec", {})
        if spec.get("storageClassName") is None:  # DefaultStorageClass admission
            defaults = [
                sc
                for sc in find("storage.k8s.io", "storageclasses")
                if ((sc["metadata"].get("annotations") or {}).get("storageclass.kubernetes.io/is-default-class"))
                == "true"
            ]
            if defaults:
                spec["storageClassName"] = defaults[0]["metadata"]["name"]
        meta.setdefault("finalizers", []).append("kubernetes.io/pvc-protection")
        obj["status"] = {"phase": "Pending"}
    elif kind == "PersistentVolume":
        meta.setdefault("finalizers", []).append("kubernetes.io/pv-protection")
        obj["status"] = {"phase": "Pending"}
    elif kind == "Service":
        spec = obj.setdefault("spec", {})
        if spec.get("type", "ClusterIP") != "ExternalName" and not spec.get("clusterIP"):
            spec["clusterIP"] = next_ip()
            spec["clusterIPs"] = [spec["clusterIP"]]
        obj["status"] = {"loadBalancer": {}}
    elif kind == "Job":
        _job_selector(obj)


def _job_selector(job: dict[str, Any]) -> None:
    """``generateSelector``: the pods of a Job carry its uid and name; the selector is the uid."""
    spec, uid, name = job.setdefault("spec", {}), job["metadata"]["uid"], job["metadata"]["name"]
    if spec.get("manualSelector"):
        return
    labels = spec.setdefault("template", {}).setdefault("metadata", {}).setdefault("labels", {})
    labels.update(
        {
            "batch.kubernetes.io/controller-uid": uid,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": uid,
            "job-name": name,
        }
    )
    spec["selector"] = {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}


def prepare_update(rt: ResourceType, old: Mapping[str, Any], new: dict[str, Any], subresource: str) -> dict[str, Any]:
    """The object to store: the main resource keeps the old status, the status subresource only changes status."""
    if subresource == "status":
        out = copy.deepcopy(dict(old))
        if "status" in new:
            out["status"] = copy.deepcopy(new["status"])
        else:
            out.pop("status", None)
        return out
    if rt.status:
        if "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        else:
            new.pop("status", None)
    if rt.kind == "Job" and not rt.custom:
        # the generated selector is immutable; a client that drops it gets it back (validation would refuse a change)
        for key in ("selector",):
            if key in (old.get("spec") or {}):
                new.setdefault("spec", {})[key] = copy.deepcopy(old["spec"][key])
    return new


def default_gc_policy(rt: ResourceType, api_version: str) -> str:
    """The propagation a DELETE without one gets (``DefaultGarbageCollectionPolicy`` of each strategy).

    batch/v1 Jobs orphan their pods for backwards compatibility (``pkg/registry/batch/job/strategy.go``);
    everything else here deletes its dependents in the background.
    """
    if rt.kind == "Job" and api_version == "batch/v1":
        return "Orphan"
    return "Background"
