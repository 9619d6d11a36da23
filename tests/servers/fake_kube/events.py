"""Events: stored once as core/v1 Events, served also as events.k8s.io/v1 Events.

- The two are one storage with two representations (``pkg/apis/events/v1/conversion.go``:
  regarding <-> involvedObject, note <-> message, deprecatedSource <-> source, ...).
- Components emit through ``emit`` with the recorder they use. The legacy one (kubelet,
  kube-controller-manager, cluster-autoscaler: ``client-go/tools/record``) writes core Events with
  ``source``, ``firstTimestamp``/``lastTimestamp`` and ``count``, and a repeat bumps ``count`` and
  ``lastTimestamp`` (the EventCorrelator, ``record/events_cache.go``); ``eventTime`` stays null,
  so the events.k8s.io view of such an event has ``eventTime: null`` (lightkube's events_v1 model
  cannot decode that, on a real server either). The new one (kube-scheduler:
  ``client-go/tools/events``) writes ``eventTime``, ``reportingController``/``reportingInstance``
  and ``action``, no ``source`` and no timestamps or count; its first repeat sets
  ``series: {count: 2, lastObservedTime}`` and later ones stay in the recorder's cache (it
  writes series updates every 30 minutes).
- Events about a cluster-scoped object (a Node) go to the ``default`` namespace (``record/event.go``).
- Components retry at their own pace (seconds: the scheduler's backoff, the PV controller's
  15 s resync, probe periods); the fake's passes can come every few milliseconds, so an identical
  repeat within ``store.memo["event_repeat_s"]`` (default 1 s) of the last one is dropped.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Mapping
from typing import Any

from .errors import KubeError
from .store import Store, now

_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)
_SEQ = itertools.count()  # keeps names unique when two events land in the same nanosecond
_SAME = ("metadata", "eventTime", "series", "reportingInstance", "action", "reason", "related", "type")


def to_v1(event: Mapping[str, Any]) -> dict[str, Any]:
    """The events.k8s.io/v1 view of a stored core Event."""
    # eventTime is not omitempty in events.k8s.io/v1: a legacy event shows it as null
    out: dict[str, Any] = {"apiVersion": "events.k8s.io/v1", "kind": "Event", "eventTime": None}
    for key in _SAME:
        if event.get(key) is not None:
            out[key] = copy.deepcopy(event[key])
    for core, v1 in _RENAMES:
        if event.get(core) is not None:
            out[v1] = copy.deepcopy(event[core])
    return out


def from_v1(event: Mapping[str, Any]) -> dict[str, Any]:
    """The core Event stored for an events.k8s.io/v1 Event."""
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Event"}
    for key in _SAME:
        if event.get(key) is not None:
            out[key] = copy.deepcopy(event[key])
    for core, v1 in _RENAMES:
        if event.get(v1) is not None:
            out[core] = copy.deepcopy(event[v1])
    return out


def reference(obj: Mapping[str, Any], field_path: str | None = None) -> dict[str, Any]:
    """An ObjectReference to ``obj`` (``involvedObject``)."""
    meta = obj.get("metadata") or {}
    ref: dict[str, Any] = {"kind": obj.get("kind"), "name": meta.get("name"), "apiVersion": obj.get("apiVersion")}
    for src, dst in (("namespace", "namespace"), ("uid", "uid"), ("resourceVersion", "resourceVersion")):
        if meta.get(src):
            ref[dst] = meta[src]
    if field_path:
        ref["fieldPath"] = field_path
    return ref


def micro_now() -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    stamp = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp)) + f".{int(stamp % 1 * 1e6):06d}Z"


def emit(
    store: Store,
    involved: Mapping[str, Any],
    type_: str,
    reason: str,
    message: str,
    component: str,
    *,
    host: str | None = None,
    field_path: str | None = None,
    action: str | None = None,
) -> dict[str, Any]:
    """Record an event about ``involved`` from ``component``; a repeat aggregates into the first one.

    With ``action`` the event is recorded as the events.k8s.io recorder does (the scheduler's way).
    """
    ref = reference(involved, field_path)
    namespace = ref.get("namespace") or "default"
    new_api = action is not None
    source: dict[str, Any] = {} if new_api else {"component": component}
    if host and not new_api:
        source["host"] = host
    with store.lock:
        for existing in store.objects(("", "events"), namespace):
            same_ref = {k: existing["involvedObject"].get(k) for k in ("kind", "name", "uid", "fieldPath")} == {
                k: ref.get(k) for k in ("kind", "name", "uid", "fieldPath")
            }
            if not (
                same_ref
                and existing.get("type") == type_
                and existing.get("reason") == reason
                and existing.get("message") == message
                and existing.get("reportingComponent") == component
                and existing.get("source") == source
            ):
                continue
            if new_api and existing.get("series"):
                return existing
            seen = store.memo.setdefault("event_seen", {})
            last = seen.get(existing["metadata"]["name"], 0.0)
            if time.monotonic() - last < store.memo.get("event_repeat_s", 1.0):
                return existing
            seen[existing["metadata"]["name"]] = time.monotonic()

            def bump(ev: dict[str, Any]) -> None:
                if new_api:
                    ev["series"] = {"count": 2, "lastObservedTime": micro_now()}
                else:
                    ev["count"] = int(ev.get("count") or 1) + 1
                    ev["lastTimestamp"] = now()

            out = store.mutate(("", "events"), namespace, existing["metadata"]["name"], bump, manager=component)
            if out is not None:
                return out
        stamp = now()
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{ref['name']}.{time.time_ns() + next(_SEQ):x}", "namespace": namespace},
            "involvedObject": ref,
            "reason": reason,
            "message": message,
            "source": source,
            "type": type_,
        }
        if new_api:
            event.update(
                {
                    "firstTimestamp": None,
                    "lastTimestamp": None,
                    "eventTime": micro_now(),
                    "action": action,
                    "reportingComponent": component,
                    "reportingInstance": f"{component}-{host or 'fake-kube'}",
                }
            )
        else:
            event.update(
                {
                    "firstTimestamp": stamp,
                    "lastTimestamp": stamp,
                    "count": 1,
                    "eventTime": None,
                    "reportingComponent": component,
                    "reportingInstance": host or "",
                }
            )
        try:
            created = store.system_create(event, manager=component)
        except KubeError:
            # e.g. a namespace being terminated: the recorder logs "Server rejected event (will not retry!)"
            return event
        store.memo.setdefault("event_seen", {})[created["metadata"]["name"]] = time.monotonic()
        return created
