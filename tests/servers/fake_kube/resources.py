"""The resource table: which (group, version, plural) the fake serves, with kind, scope and subresources.

Built-in types are listed here; custom resources are added from a CustomResourceDefinition object
when one is stored and removed with it, as ``apiextensions-apiserver`` serves a CR path only while
its CRD exists (``staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/customresource_handler.go``:
a request for an unknown CRD is handed to the delegate, which ends in the NotFound handler).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

VERBS = frozenset({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"})
_META_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


@dataclass(frozen=True)
class ResourceType:
    """One served resource: ``plural`` of ``group`` at ``versions``, objects of ``kind``."""

    group: str
    versions: tuple[str, ...]
    plural: str
    kind: str
    namespaced: bool
    status: bool = False  # has a status subresource: writes to the main resource keep .status
    verbs: frozenset[str] = VERBS
    custom: bool = False  # from a CRD: lists are atomic for apply, generation counts every non-metadata change
    fields: frozenset[str] = _META_FIELDS  # field selectors the server accepts for it
    store_as: tuple[str, str] | None = None  # another type's storage (events.k8s.io Event is a core Event)
    short: tuple[str, ...] = field(default=())

    @property
    def key(self) -> tuple[str, str]:
        """The storage key: objects of this type live under it, whatever the version asked."""
        return self.store_as or (self.group, self.plural)

    def api_version(self, version: str | None = None) -> str:
        """``v1`` or ``apps/v1``."""
        version = version or self.versions[0]
        return f"{self.group}/{version}" if self.group else version

    @property
    def list_kind(self) -> str:
        """``PodList`` (custom resources may name their own listKind; the default is the same)."""
        return self.kind + "List"


def _rt(group: str, version: str, plural: str, kind: str, namespaced: bool = True, **kw: Any) -> ResourceType:
    extra = frozenset(kw.pop("fields", ()))
    return ResourceType(group, (version,), plural, kind, namespaced, fields=_META_FIELDS | extra, **kw)


# Field selectors per type: the fieldLabelConversionFuncs in pkg/apis/core/v1/conversion.go,
# pkg/apis/apps/v1/conversion.go and pkg/apis/batch/v1/conversion.go; anything else answers
# 400 "field label not supported".
_POD_FIELDS = (
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
_EVENTS_V1_FIELDS = (
    "regarding.kind",
    "regarding.namespace",
    "regarding.name",
    "regarding.uid",
    "regarding.apiVersion",
    "regarding.resourceVersion",
    "regarding.fieldPath",
    "reason",
    "reportingController",
    "type",
)

BUILTINS: tuple[ResourceType, ...] = (
    _rt("", "v1", "namespaces", "Namespace", False, status=True, fields=("status.phase",)),
    _rt("", "v1", "nodes", "Node", False, status=True, fields=("spec.unschedulable",)),
    _rt("", "v1", "pods", "Pod", status=True, fields=_POD_FIELDS),
    _rt("", "v1", "events", "Event", fields=_EVENT_FIELDS),
    _rt("", "v1", "services", "Service", status=True),
    _rt("", "v1", "endpoints", "Endpoints"),
    _rt("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    _rt("", "v1", "serviceaccounts", "ServiceAccount"),
    _rt("", "v1", "configmaps", "ConfigMap"),
    _rt("", "v1", "secrets", "Secret", fields=("type",)),
    _rt("", "v1", "persistentvolumes", "PersistentVolume", False, status=True),
    _rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True),
    _rt("", "v1", "resourcequotas", "ResourceQuota", status=True),
    _rt("", "v1", "limitranges", "LimitRange"),
    _rt("events.k8s.io", "v1", "events", "Event", fields=_EVENTS_V1_FIELDS, store_as=("", "events")),
    _rt("apps", "v1", "deployments", "Deployment", status=True),
    _rt("apps", "v1", "replicasets", "ReplicaSet", status=True, fields=("status.replicas",)),
    _rt("apps", "v1", "statefulsets", "StatefulSet", status=True),
    _rt("apps", "v1", "daemonsets", "DaemonSet", status=True),
    _rt("batch", "v1", "jobs", "Job", status=True, fields=("status.successful",)),
    _rt("batch", "v1", "cronjobs", "CronJob", status=True),
    _rt("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", status=True),
    _rt("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
    _rt("networking.k8s.io", "v1", "ingresses", "Ingress", status=True),
    _rt("storage.k8s.io", "v1", "storageclasses", "StorageClass", False),
    _rt("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", status=True),
    _rt("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False),
    _rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _rt("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", False, status=True),
    # A review is not stored: POST answers it (pkg/registry/authorization/selfsubjectaccessreview/rest.go).
    _rt(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        verbs=frozenset({"create"}),
    ),
)


def from_crd(crd: Mapping[str, Any]) -> ResourceType | None:
    """The type a CRD serves, or None while it serves nothing (no served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    versions = tuple(v["name"] for v in spec.get("versions") or () if v.get("served", True))
    if not versions or not names.get("plural") or not names.get("kind") or not spec.get("group"):
        return None
    with_status = any("status" in (v.get("subresources") or {}) for v in spec.get("versions") or ())
    return ResourceType(
        spec["group"],
        versions,
        names["plural"],
        names["kind"],
        spec.get("scope", "Namespaced") == "Namespaced",
        status=with_status,
        custom=True,
        short=tuple(names.get("shortNames") or ()),
    )


class ResourceTable:
    """Built-ins plus the custom resources of the CRDs in the store."""

    def __init__(self) -> None:
        self._builtin = {(rt.group, v, rt.plural): rt for rt in BUILTINS for v in rt.versions}
        self._custom: dict[str, ResourceType] = {}  # CRD name -> type

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at /apis/group/version/plural (or /api/v1/plural), if any."""
        found = self._builtin.get((group, version, plural))
        if found is not None:
            return found
        for rt in self._custom.values():
            if rt.group == group and rt.plural == plural and version in rt.versions:
                return rt
        return None

    def by_key(self, key: tuple[str, str]) -> ResourceType | None:
        """The primary type stored under ``key`` (for events: the core one)."""
        for rt in self:
            if rt.key == key and rt.store_as is None:
                return rt
        return None

    def by_kind(self, api_version: str, kind: str) -> ResourceType | None:
        """The type of an object with this apiVersion and kind."""
        group, _, version = api_version.rpartition("/")
        for rt in self:
            if rt.group == group and rt.kind == kind and version in rt.versions:
                return rt
        return None

    def set_crd(self, name: str, rt: ResourceType | None) -> None:
        """Serve (or stop serving) the custom resource of CRD ``name``."""
        if rt is None:
            self._custom.pop(name, None)
        else:
            self._custom[name] = rt

    def groups(self) -> dict[str, list[str]]:
        """Served group -> versions, for discovery (``/apis``)."""
        out: dict[str, list[str]] = {}
        for rt in self:
            if rt.group:
                versions = out.setdefault(rt.group, [])
                versions.extend(v for v in rt.versions if v not in versions)
        return out

    def in_group_version(self, group: str, version: str) -> Iterable[ResourceType]:
        """The types of one group version, for discovery (``/apis/group/version``)."""
        return [rt for rt in self if rt.group == group and version in rt.versions]

    def __iter__(self) -> Iterator[ResourceType]:
        seen: set[int] = set()
        for rt in (*self._builtin.values(), *self._custom.values()):
            if id(rt) not in seen:
                seen.add(id(rt))
                yield rt
