"""The object store: objects, one global resourceVersion, managed fields, watch history and watchers.

What it follows:

- A single increasing resourceVersion (a string on the wire) bumps on every write, as etcd's
  revision does; a write that changes nothing is not a write (no new resourceVersion), as the
  storage layer skips identical updates (``staging/src/k8s.io/apiserver/pkg/storage/etcd3/store.go``
  GuaranteedUpdate) and an unchanged apply is a no-op.
- Watch semantics of https://kubernetes.io/docs/reference/using-api/api-concepts/#semantics-for-watch :
  no resourceVersion (or "0") starts with synthetic ADDED events for the current objects; a
  resourceVersion N replays the changes after N, then goes on live; N older than the retained
  history answers a 410 Expired ERROR event (the watch cache's ``too old resource version``).
  With a selector an object that stops matching is sent as DELETED and one that starts as ADDED
  (``staging/src/k8s.io/apiserver/pkg/storage/cacher/cache_watcher.go`` convertToWatchEvent).
- Server-set metadata: uid, creationTimestamp, resourceVersion, generation (see strategy.py).
- Deletion: finalizers hold an object with a deletionTimestamp; Foreground and Orphan
  propagation add the ``foregroundDeletion`` / ``orphan`` finalizers the garbage collector
  then works off (https://kubernetes.io/docs/concepts/architecture/garbage-collection/);
  a pod bound to a node is deleted gracefully (deletionTimestamp, then the kubelet removes it).

All of it is guarded by one re-entrant lock: the HTTP thread and the controller thread share it.
"""

from __future__ import annotations

import copy
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import errors, strategy
from .errors import KubeError
from .fields import Manager, apply_config, track_update
from .resources import ResourceTable, ResourceType, from_crd

Key = tuple[str, str, str, str]  # group, plural, namespace ("" when cluster-scoped), name
_UNTRACKED_META = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "selfLink",
    }
)
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"  # utilrand's alphabet: no vowels, no 0 1 3
_HISTORY = 50_000  # changes kept for watches that resume from a resourceVersion


def now() -> str:
    """RFC 3339 in UTC with second precision, as metav1.Time marshals."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def in_seconds(seconds: float) -> str:
    """An RFC 3339 time ``seconds`` from now."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + seconds))


@dataclass(frozen=True)
class Change:
    """One write: ``old`` None for a create, ``new`` None for a delete."""

    rv: int
    key: tuple[str, str]
    namespace: str
    old: dict[str, Any] | None
    new: dict[str, Any] | None


class Watcher:
    """One open watch: which objects it wants and where its events go."""

    def __init__(
        self,
        key: tuple[str, str],
        namespace: str | None,
        predicate: Callable[[dict[str, Any]], bool],
        view: Callable[[dict[str, Any]], dict[str, Any]],
        deliver: Callable[[dict[str, Any]], None],
    ) -> None:
        self.key, self.namespace, self.predicate, self.view, self.deliver = key, namespace, predicate, view, deliver

    def event(self, change: Change) -> dict[str, Any] | None:
        """The watch event this change is for this watcher, if any (selector transitions included)."""
        if change.key != self.key or (self.namespace is not None and change.namespace != self.namespace):
            return None
        old = self.view(change.old) if change.old is not None else None
        new = self.view(change.new) if change.new is not None else None
        old_ok = old is not None and self.predicate(old)
        new_ok = new is not None and self.predicate(new)
        if new_ok:
            return {"type": "MODIFIED" if old_ok else "ADDED", "object": new}
        if old_ok and old is not None:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(change.rv)
            return {"type": "DELETED", "object": gone}
        return None


def tracked(rt: ResourceType, obj: Mapping[str, Any], subresource: str = "") -> dict[str, Any]:
    """The part of an object whose fields managers own (apiVersion, kind and system metadata are not)."""
    if subresource == "status":
        return {"status": copy.deepcopy(obj["status"])} if "status" in obj else {}
    out = {k: copy.deepcopy(v) for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    if rt.status:
        out.pop("status", None)
    meta = {k: copy.deepcopy(v) for k, v in (obj.get("metadata") or {}).items() if k not in _UNTRACKED_META}
    if meta:
        out["metadata"] = meta
    return out


class Store:
    """Objects by (group, plural, namespace, name), with history for watches."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.table = ResourceTable()
        self._rv = 1000
        self._compacted = self._rv  # watches from below this answer 410
        self._objects: dict[Key, dict[str, Any]] = {}
        self._managers: dict[Key, list[Manager]] = {}
        self._history: list[Change] = []
        self._watchers: set[Watcher] = set()
        self._ips = itertools.count(1)
        self.memo: dict[str, Any] = {}  # the components' own state (a kubelet's restart counts), not API data

    # -- reading -------------------------------------------------------------------------------

    @property
    def resource_version(self) -> str:
        """The current resourceVersion (what a list carries)."""
        return str(self._rv)

    def objects(self, key: tuple[str, str], namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the objects stored under ``key`` (one namespace or all), in etcd key order."""
        with self.lock:
            found = [
                (k, obj)
                for k, obj in self._objects.items()
                if k[:2] == key and (namespace is None or k[2] == namespace)
            ]
            return [copy.deepcopy(obj) for _, obj in sorted(found, key=lambda kv: kv[0])]

    def get(self, key: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """A copy of one object, or None."""
        with self.lock:
            obj = self._objects.get((*key, namespace, name))
            return copy.deepcopy(obj) if obj is not None else None

    def by_uid(self, uid: str) -> dict[str, Any] | None:
        """The object with this uid, if it exists (the garbage collector's owner check)."""
        with self.lock:
            for obj in self._objects.values():
                if obj["metadata"].get("uid") == uid:
                    return copy.deepcopy(obj)
        return None

    def dependents(self, uid: str) -> list[tuple[ResourceType, dict[str, Any]]]:
        """Objects with an ownerReference to ``uid``."""
        with self.lock:
            out = []
            for k, obj in sorted(self._objects.items()):
                refs = obj["metadata"].get("ownerReferences") or ()
                rt = self.table.by_key(k[:2])
                if rt is not None and any(r.get("uid") == uid for r in refs):
                    out.append((rt, copy.deepcopy(obj)))
            return out

    def keys(self) -> list[Key]:
        """Every stored key."""
        with self.lock:
            return sorted(self._objects)

    def next_ip(self) -> str:
        """A fresh address for a ClusterIP or a pod IP."""
        n = next(self._ips)
        return f"10.{96 + n // 65536 % 100}.{n // 256 % 256}.{n % 256}"

    # -- committing ----------------------------------------------------------------------------

    def _commit(
        self, rt: ResourceType, key: Key, new: dict[str, Any] | None, managers: list[Manager] | None = None
    ) -> dict[str, Any] | None:
        old = self._objects.get(key)
        if new is not None:
            new = copy.deepcopy(new)
            meta = new.setdefault("metadata", {})
            managers = managers if managers is not None else self._managers.get(key, [])
            if managers:
                meta["managedFields"] = [m.entry() for m in managers]
            else:
                meta.pop("managedFields", None)
            if old is not None:
                meta["resourceVersion"] = old["metadata"]["resourceVersion"]
                if new == old:
                    return copy.deepcopy(old)
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[key] = new
            self._managers[key] = [copy.deepcopy(m) for m in managers]
        else:
            if old is None:
                return None
            del self._objects[key]
            self._managers.pop(key, None)
            self._rv += 1
        change = Change(self._rv, key[:2], key[2], copy.deepcopy(old), copy.deepcopy(new))
        self._history.append(change)
        if len(self._history) > _HISTORY:
            drop = len(self._history) - _HISTORY // 2
            self._compacted = self._history[drop - 1].rv
            del self._history[:drop]
        for watcher in list(self._watchers):
            event = watcher.event(change)
            if event is not None:
                watcher.deliver(event)
        if key[:2] == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._crd_changed(change)
        if key[:2] == ("", "namespaces") and old is None and new is not None:
            self._default_service_account(key[3])
        if new is None and old is not None:
            gone = copy.deepcopy(old)
            gone["metadata"]["resourceVersion"] = str(self._rv)
            return gone
        return copy.deepcopy(new)

    def _crd_changed(self, change: Change) -> None:
        """The apiextensions controllers: accept names, establish, serve; on delete, drop the instances."""
        crd = change.new
        name = (change.new or change.old or {}).get("metadata", {}).get("name", "")
        crd_rt = self.table.lookup("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        assert crd_rt is not None
        if crd is None or crd["metadata"].get("deletionTimestamp"):
            served = self.table._custom.get(name)
            self.table.set_crd(name, None)
            if served is not None:
                for key in [k for k in self._objects if k[:2] == served.key]:
                    self._commit(served, key, None)
            if crd is not None:  # the instances are gone: the CRD's cleanup finalizer would now be removed
                self._commit(crd_rt, (*change.key, "", name), None)
            return
        served_rt = from_crd(crd)
        self.table.set_crd(name, served_rt)
        conditions = (crd.get("status") or {}).get("conditions") or []
        if served_rt is not None and not any(c.get("type") == "Established" for c in conditions):
            status = copy.deepcopy(crd.get("status") or {})
            stamp = now()
            status["conditions"] = [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": stamp,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": stamp,
                },
            ]
            status["acceptedNames"] = copy.deepcopy(crd["spec"]["names"])
            status["storedVersions"] = [v["name"] for v in crd["spec"]["versions"] if v.get("storage")]
            updated = copy.deepcopy(crd)
            updated["status"] = status
            manager = Manager("kube-apiserver", "Update", "apiextensions.k8s.io/v1", now(), "status")
            key = (*change.key, "", name)
            managers = track_update(
                tracked(crd_rt, crd, "status"),
                tracked(crd_rt, updated, "status"),
                self._managers.get(key, []),
                manager,
                keyed=True,
            )
            self._commit(crd_rt, key, updated, managers)

    def _default_service_account(self, namespace: str) -> None:
        """The serviceaccounts controller gives every new namespace its ``default`` ServiceAccount."""
        rt = self.table.by_key(("", "serviceaccounts"))
        assert rt is not None
        key = ("", "serviceaccounts", namespace, "default")
        if key not in self._objects:
            sa = self._new_object(rt, {"apiVersion": "v1", "kind": "ServiceAccount"}, namespace, "default")
            manager = Manager("kube-controller-manager", "Update", "v1", now())
            self._commit(rt, key, sa, track_update({}, tracked(rt, sa), [], manager, keyed=True))

    def _admit_pod(self, obj: Mapping[str, Any], namespace: str) -> None:
        """ServiceAccount admission (plugin/pkg/admission/serviceaccount/admission.go): the account must exist."""
        account = (obj.get("spec") or {}).get("serviceAccountName") or "default"
        if ("", "serviceaccounts", namespace, account) not in self._objects:
            meta = obj.get("metadata") or {}
            name = meta.get("name") or meta.get("generateName") or "Unknown"  # before name generation
            why = f'error looking up service account {namespace}/{account}: serviceaccount "{account}" not found'
            raise errors.forbidden("", "pods", name, why)

    def compact(self) -> None:
        """Forget the watch history, as etcd compaction does: a watch from an older resourceVersion gets 410."""
        with self.lock:
            self._history.clear()
            self._compacted = self._rv

    # -- watching ------------------------------------------------------------------------------

    def watch(
        self,
        key: tuple[str, str],
        namespace: str | None,
        predicate: Callable[[dict[str, Any]], bool],
        view: Callable[[dict[str, Any]], dict[str, Any]],
        deliver: Callable[[dict[str, Any]], None],
        since: int | None,
    ) -> tuple[Watcher, list[dict[str, Any]]]:
        """Register a watcher; the events it starts with (synthetic ADDED, or the replay after ``since``)."""
        with self.lock:
            watcher = Watcher(key, namespace, predicate, view, deliver)
            if since is None:
                initial = [
                    {"type": "ADDED", "object": view(obj)}
                    for obj in self.objects(key, namespace)
                    if predicate(view(obj))
                ]
            else:
                if since < self._compacted:
                    raise errors.expired(f"too old resource version: {since} ({self._compacted})")
                initial = [e for c in self._history if c.rv > since and (e := watcher.event(c)) is not None]
            self._watchers.add(watcher)
            return watcher, initial

    def unwatch(self, watcher: Watcher) -> None:
        """Stop delivering to a watcher."""
        with self.lock:
            self._watchers.discard(watcher)

    def watchers(self) -> list[Watcher]:
        """The open watchers."""
        with self.lock:
            return list(self._watchers)

    # -- writes as the API does them -----------------------------------------------------------

    def _key(self, rt: ResourceType, namespace: str, name: str) -> Key:
        return (*rt.key, namespace if rt.namespaced else "", name)

    def _check_namespace(self, rt: ResourceType, namespace: str) -> None:
        """NamespaceLifecycle admission: no content in a missing or terminating namespace."""
        if not rt.namespaced:
            return
        ns = self._objects.get(("", "namespaces", "", namespace))
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            why = f"unable to create new content in namespace {namespace} because it is being terminated"
            raise errors.forbidden(rt.group, rt.plural, "", why)

    def _new_object(self, rt: ResourceType, obj: dict[str, Any], namespace: str, name: str) -> dict[str, Any]:
        meta = obj.setdefault("metadata", {})
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "generation", "selfLink", "managedFields"):
            meta.pop(k, None)
        meta["name"] = name
        if rt.namespaced:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        obj["apiVersion"] = obj.get("apiVersion") or rt.api_version()
        obj["kind"] = rt.kind
        strategy.apply_defaults(rt, obj)
        strategy.prepare_create(rt, obj, find=lambda g, p: [o for o in self.objects((g, p))], next_ip=self.next_ip)
        if strategy.has_generation(rt, obj):
            meta["generation"] = 1
        return obj

    def _updated_object(self, rt: ResourceType, old: dict[str, Any], new: dict[str, Any], sub: str) -> dict[str, Any]:
        new = strategy.prepare_update(rt, old, new, sub)
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
            if k in old_meta:
                meta[k] = old_meta[k]
            else:
                meta.pop(k, None)
        new["apiVersion"] = new.get("apiVersion") or old["apiVersion"]
        new["kind"] = rt.kind
        strategy.apply_defaults(rt, new)
        meta.pop("generation", None)
        if "generation" in old_meta:
            bump = strategy.generation_changed(rt, old, new)
            meta["generation"] = old_meta["generation"] + (1 if bump else 0)
        elif strategy.has_generation(rt, new):
            meta["generation"] = 1
        return new

    def _finish(self, rt: ResourceType, key: Key, new: dict[str, Any], managers: list[Manager]) -> dict[str, Any]:
        """Commit an update, or the deletion it completes (deletionTimestamp set and no finalizer left)."""
        meta = new["metadata"]
        pending_pod = rt.kind == "Pod" and not rt.group and (meta.get("deletionGracePeriodSeconds") or 0) > 0
        pending_ns = rt.kind == "Namespace" and not rt.group and (new.get("spec") or {}).get("finalizers")
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and not pending_pod and not pending_ns:
            gone = self._commit(rt, key, None)
            assert gone is not None
            return gone
        out = self._commit(rt, key, new, managers)
        assert out is not None
        return out

    def create(
        self,
        rt: ResourceType,
        namespace: str,
        body: Mapping[str, Any],
        *,
        manager: str,
        api_version: str,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """POST: 201 with the stored object; 409 AlreadyExists; 422 without a name."""
        obj = copy.deepcopy(dict(body))
        meta = obj.setdefault("metadata", {})
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self.lock:
            if rt.key == ("", "pods"):
                self._check_namespace(rt, namespace)
                self._admit_pod(obj, namespace)
            if not meta.get("name") and meta.get("generateName"):
                # generateName: 5 random characters (staging/src/k8s.io/apiserver/pkg/storage/names/generate.go)
                meta["name"] = meta["generateName"] + "".join(random.choice(ALPHANUMS) for _ in range(5))
            strategy.validate_name(rt, obj)
            name = meta["name"]
            key = self._key(rt, namespace, name)
            self._check_namespace(rt, namespace)
            if key in self._objects:
                raise errors.already_exists(rt.group, rt.plural, name)
            new = self._new_object(rt, obj, namespace, name)
            me = Manager(manager, "Update", api_version, now())
            managers = track_update({}, tracked(rt, new), [], me, keyed=not rt.custom)
            if dry_run:
                new["metadata"].pop("resourceVersion", None)
                return new
            out = self._commit(rt, key, new, managers)
            assert out is not None
            return out

    def update(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        manager: str,
        api_version: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """PUT: replace; 404 when absent; 409 when metadata.resourceVersion is given and stale."""
        new = copy.deepcopy(dict(body))
        meta = new.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        with self.lock:
            key = self._key(rt, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise errors.not_found(rt.group, rt.plural, name)
            wanted = meta.get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise errors.conflict(rt.group, rt.plural, name, errors.MODIFIED)
            return self._update_from(rt, key, old, new, manager, api_version, subresource, dry_run)

    def _update_from(
        self,
        rt: ResourceType,
        key: Key,
        old: dict[str, Any],
        new: dict[str, Any],
        manager: str,
        api_version: str,
        subresource: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        new.setdefault("metadata", {}).pop("managedFields", None)  # clients cannot rewrite ownership here
        new = self._updated_object(rt, old, new, subresource)
        me = Manager(manager, "Update", api_version, now(), subresource)
        managers = track_update(
            tracked(rt, old, subresource),
            tracked(rt, new, subresource),
            self._managers.get(key, []),
            me,
            keyed=not rt.custom,
        )
        if dry_run:
            return new
        return self._finish(rt, key, new, managers)

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        patcher: Callable[[dict[str, Any]], dict[str, Any]],
        *,
        manager: str,
        api_version: str,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """A non-apply PATCH: ``patcher`` turns the current object into the new one (404 when absent)."""
        with self.lock:
            key = self._key(rt, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise errors.not_found(rt.group, rt.plural, name)
            new = patcher(copy.deepcopy(old))
            if not isinstance(new, dict):
                raise errors.bad_request("the patch did not produce an object")
            return self._update_from(rt, key, old, new, manager, api_version, subresource, dry_run)

    def apply(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        *,
        manager: str,
        api_version: str,
        force: bool = False,
        subresource: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Server-side apply: create when absent, else merge with field ownership (409 on conflict)."""
        if not manager:
            cause = ("fieldManager", "FieldValueRequired", "Required value: is required for apply patch")
            raise errors.invalid("PatchOptions", "meta.k8s.io", "", [cause])
        if not isinstance(body, Mapping):
            raise errors.bad_request("the body of an apply patch must be an object")
        meta = body.get("metadata") or {}
        if "managedFields" in meta:
            raise errors.bad_request("metadata.managedFields must be nil")
        if not body.get("apiVersion") or not body.get("kind"):
            raise errors.bad_request("apply patches must set apiVersion and kind")
        if body.get("kind") != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({body.get('kind')}) does not match the expected kind ({rt.kind})"
            )
        if meta.get("name") and meta["name"] != name:
            raise errors.bad_request(
                f"the name of the object ({meta['name']}) does not match the name on the URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self.lock:
            key = self._key(rt, namespace, name)
            old = self._objects.get(key)
            if old is None and subresource:
                raise errors.not_found(rt.group, rt.plural, name)
            base: dict[str, Any]
            if old is None:
                base = {"apiVersion": body["apiVersion"], "kind": rt.kind, "metadata": {"name": name}}
                strategy.validate_name(rt, base)
                self._check_namespace(rt, namespace)
            else:
                base = old
            me = Manager(manager, "Apply", api_version, now(), subresource)
            merged, managers = apply_config(
                base,
                tracked(rt, base, subresource),
                self._managers.get(key, []),
                tracked(rt, body, subresource),
                me,
                force,
                keyed=not rt.custom,
            )
            if old is None:
                merged["apiVersion"] = body["apiVersion"]
                new = self._new_object(rt, merged, namespace, name)
                if dry_run:
                    new["metadata"].pop("resourceVersion", None)
                    new["metadata"]["managedFields"] = [m.entry() for m in managers]
                    return new
                out = self._commit(rt, key, new, managers)
                assert out is not None
                return out
            merged["apiVersion"] = body["apiVersion"]
            new = self._updated_object(rt, old, merged, subresource)
            if dry_run:
                new["metadata"]["managedFields"] = [m.entry() for m in managers]
                return new
            return self._finish(rt, key, new, managers)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        propagation: str | None = None,
        grace: int | None = None,
        preconditions: Mapping[str, str] | None = None,
        api_version: str = "",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """DELETE: the object and whether it is gone already (False: it waits on finalizers or the kubelet)."""
        with self.lock:
            key = self._key(rt, namespace, name)
            old = self._objects.get(key)
            if old is None:
                raise errors.not_found(rt.group, rt.plural, name)
            meta = old["metadata"]
            for field in ("uid", "resourceVersion"):
                want = (preconditions or {}).get(field)
                if want and want != meta.get(field):
                    why = f"Precondition failed: {field.upper() if field == 'uid' else field} in precondition: {want}, "
                    why += f"{field.upper() if field == 'uid' else field} in object meta: {meta.get(field)}"
                    raise errors.conflict(rt.group, rt.plural, name, why)
            policy = propagation or strategy.default_gc_policy(rt, api_version or old.get("apiVersion", ""))
            if policy not in ("Foreground", "Background", "Orphan"):
                raise errors.bad_request(f"propagationPolicy: Unsupported value: {policy!r}")
            new = copy.deepcopy(old)
            nmeta = new["metadata"]
            finalizers = list(nmeta.get("finalizers") or [])
            if policy == "Foreground" and "foregroundDeletion" not in finalizers:
                finalizers.append("foregroundDeletion")
            if policy == "Orphan" and "orphan" not in finalizers:
                finalizers.append("orphan")
            is_pod, is_ns = rt.key == ("", "pods"), rt.key == ("", "namespaces")
            if is_pod:
                grace = grace if grace is not None else (old.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
                graceful = bool((old.get("spec") or {}).get("nodeName")) and (grace or 0) > 0
                if (old.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    graceful = False  # a terminal pod has nothing to stop (pkg/registry/core/pod/strategy.go)
            else:
                graceful = False
            if is_ns:
                new.setdefault("status", {})["phase"] = "Terminating"
            if finalizers or graceful or is_ns:
                if meta.get("deletionTimestamp"):
                    return copy.deepcopy(old), False
                nmeta["finalizers"] = finalizers
                if not finalizers:
                    nmeta.pop("finalizers")
                nmeta["deletionTimestamp"] = in_seconds(grace or 0) if graceful else now()
                nmeta["deletionGracePeriodSeconds"] = grace if graceful else 0
                if "generation" in nmeta:
                    nmeta["generation"] += 1
                if dry_run:
                    return new, False
                out = self._commit(rt, key, new)
                assert out is not None
                return out, False
            if dry_run:
                return copy.deepcopy(old), True
            gone = self._commit(rt, key, None)
            assert gone is not None
            return gone, True

    # -- writes as a controller does them ------------------------------------------------------

    def system_create(self, obj: Mapping[str, Any], *, manager: str) -> dict[str, Any]:
        """Create as an in-cluster component (no authorization, same strategies)."""
        rt = self.table.by_kind(obj["apiVersion"], obj["kind"])
        if rt is None:
            raise KeyError(f"no type for {obj['apiVersion']} {obj['kind']}")
        namespace = (obj.get("metadata") or {}).get("namespace", "") if rt.namespaced else ""
        return self.create(rt, namespace, obj, manager=manager, api_version=obj["apiVersion"])

    def mutate(
        self, key: tuple[str, str], namespace: str, name: str, change: Callable[[dict[str, Any]], None], *, manager: str
    ) -> dict[str, Any] | None:
        """Read-modify-write one object as a component; None when it is gone. A no-op writes nothing.

        A change to status and to the rest goes out as two writes (main resource, then the status
        subresource), as a component's requests do.
        """
        with self.lock:
            rt = self.table.by_key(key)
            assert rt is not None, key
            full = (*key, namespace, name)
            old = self._objects.get(full)
            if old is None:
                return None
            new = copy.deepcopy(old)
            change(new)
            out: dict[str, Any] | None = copy.deepcopy(old)
            rest_changed = {k: v for k, v in new.items() if k != "status"} != {
                k: v for k, v in old.items() if k != "status"
            }
            if rest_changed or not rt.status:
                out = self._update_from(rt, full, old, copy.deepcopy(new), manager, old["apiVersion"], "", False)
            if rt.status and new.get("status") != old.get("status"):
                current = self._objects.get(full)
                if current is None:
                    return None
                out = self._update_from(rt, full, current, new, manager, old["apiVersion"], "status", False)
            return out

    def remove(self, key: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """Delete at once, finalizers or not (a kubelet's final delete, a namespace controller's purge)."""
        with self.lock:
            rt = self.table.by_key(key)
            assert rt is not None
            return self._commit(rt, (*key, namespace, name), None)

    def end_grace(self, key: tuple[str, str], namespace: str, name: str) -> dict[str, Any] | None:
        """A kubelet's final delete (grace 0): the object goes, or waits on its finalizers; None when gone."""
        with self.lock:
            rt = self.table.by_key(key)
            assert rt is not None
            full = (*key, namespace, name)
            old = self._objects.get(full)
            if old is None:
                return None
            if not old["metadata"].get("finalizers"):
                self._commit(rt, full, None)
                return None
            new = copy.deepcopy(old)
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            return self._commit(rt, full, new)

    def delete_as(
        self, key: tuple[str, str], namespace: str, name: str, *, propagation: str = "Background"
    ) -> dict[str, Any] | None:
        """DELETE as a component (the garbage collector); None when already gone."""
        rt = self.table.by_key(key)
        assert rt is not None
        try:
            obj, _ = self.delete(rt, namespace, name, propagation=propagation)
        except KubeError as exc:
            if exc.code == 404:
                return None
            raise
        return obj

    def all_objects(self) -> Iterable[tuple[Key, dict[str, Any]]]:
        """Copies of every object with its key."""
        with self.lock:
            return [(k, copy.deepcopy(v)) for k, v in sorted(self._objects.items())]
