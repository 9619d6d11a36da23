"""kube-controller-manager, one pass each: Deployment, ReplicaSet, Job, garbage collector, namespace, pod GC.

- Deployment (``pkg/controller/deployment``): a ReplicaSet ``NAME-HASH`` per pod template, the hash
  ``pod-template-hash`` label on it and its pods (``controller.ComputeHash``: fnv32a, then
  ``rand.SafeEncodeString``; here over the template's JSON, so the value differs from a real
  server's but has its form). ComputeHash hashes the whole PodTemplateSpec, metadata included, so an
  annotation-only change (``kubectl rollout restart``'s ``kubectl.kubernetes.io/restartedAt``) is a new
  ReplicaSet and a rollout too. Status: observedGeneration, replicas, updatedReplicas, readyReplicas,
  availableReplicas, unavailableReplicas and the conditions of ``deployment/util/deployment_util.go``:
  Available (MinimumReplicasAvailable / MinimumReplicasUnavailable against maxUnavailable) and
  Progressing (NewReplicaSetCreated, ReplicaSetUpdated, NewReplicaSetAvailable, and
  ProgressDeadlineExceeded once progressDeadlineSeconds pass without progress or when told).
  A RollingUpdate steps as ``deployment/rolling.go`` does each sync: ``reconcileNewReplicaSet``
  scales the new ReplicaSet up to at most replicas + maxSurge pods in all ReplicaSets' spec
  (``NewRSNewReplicas``), then ``reconcileOldReplicaSets`` scales the old ones (oldest first) down
  while at least replicas - maxUnavailable pods stay available, first the old pods that are not
  available (``cleanupUnhealthyReplicas``), then available ones
  (``scaleDownOldReplicaSetsForRollingUpdate``). maxSurge rounds up, maxUnavailable down, both
  25% by default, and both 0 means maxUnavailable 1 (``ResolveFenceposts``). A terminating pod
  counts for nothing (the ReplicaSet's status leaves it out, ``FilterActivePods``), so an old pod
  still in its grace period does not hold the rollout back, as in 1.30 (the
  ``terminatingReplicas`` of later releases is not modelled). Recreate scales the old ones down
  first. minReadySeconds (available = ready), pausing, rollback, proportional scaling of a
  Deployment resized mid-rollout and revision history pruning are not modelled.
- ReplicaSet (``pkg/controller/replicaset``): creates or deletes pods to spec.replicas
  (``SuccessfulCreate`` ``Created pod: NAME``), status counts; a refused create (a missing
  ServiceAccount) is a ``FailedCreate`` event ``Error creating: <the API's message>`` and the
  ``ReplicaFailure`` condition, which the Deployment shows too. No adoption of orphan pods, no
  slow-start batches.
- Job (``pkg/controller/job``): pods up to parallelism, ``Complete`` when completions succeeded,
  ``Failed`` with ``BackoffLimitExceeded`` when failures pass backoffLimit (1.30's conditions: the
  ``SuccessCriteriaMet``/``FailureTarget`` of later releases and pod tracking finalizers are not
  modelled), events ``SuccessfulCreate``, ``Completed``, ``BackoffLimitExceeded``.
- Garbage collector (https://kubernetes.io/docs/concepts/architecture/garbage-collection/): works
  off the ``foregroundDeletion`` and ``orphan`` finalizers and deletes dependents whose owners are
  all gone (background propagation).
- Namespace controller: deletes a terminating namespace's content, then the namespace.
- Pod GC (``pkg/controller/podgc``): deletes pods bound to a node that no longer exists.
"""

from __future__ import annotations

import calendar
import copy
import json
import math
import time
from collections.abc import Mapping
from typing import Any

from . import events
from .errors import KubeError
from .selectors import selector_matches
from .store import ALPHANUMS, Store, now

MANAGER = "kube-controller-manager"
REVISION = "deployment.kubernetes.io/revision"


def owner_ref(obj: Mapping[str, Any]) -> dict[str, Any]:
    """A controller ownerReference to ``obj`` (as controllers set it: controller and blockOwnerDeletion)."""
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    """Whether ``obj``'s controller reference is ``uid``."""
    return any(r.get("uid") == uid and r.get("controller") for r in obj["metadata"].get("ownerReferences") or ())


def template_hash(template: Mapping[str, Any], collisions: int = 0) -> str:
    """fnv32a of the template, as ``rand.SafeEncodeString(fmt.Sprint(hash))``."""
    h = 0x811C9DC5
    for byte in json.dumps(template, sort_keys=True, separators=(",", ":")).encode() + str(collisions).encode():
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return "".join(ALPHANUMS[ord(ch) % len(ALPHANUMS)] for ch in str(h))


def _epoch(stamp: str | None) -> float:
    if not stamp:
        return 0.0
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def _int_or_percent(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        exact = total * int(value[:-1]) / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(value or 0)


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def _active(pod: Mapping[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") not in (
        "Succeeded",
        "Failed",
    )


def _replicas(rs: Mapping[str, Any] | None) -> int:
    return int(((rs or {}).get("spec") or {}).get("replicas", 0))


def _available(rs: Mapping[str, Any] | None) -> int:
    return int(((rs or {}).get("status") or {}).get("availableReplicas", 0))


def _fenceposts(spec: Mapping[str, Any]) -> tuple[int, int]:
    """(maxSurge, maxUnavailable) as pods (``deployment_util.go`` ResolveFenceposts)."""
    replicas = int(spec.get("replicas", 1))
    rolling = (spec.get("strategy") or {}).get("rollingUpdate") or {}
    surge = _int_or_percent(rolling.get("maxSurge", "25%"), replicas, True)
    unavailable = _int_or_percent(rolling.get("maxUnavailable", "25%"), replicas, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # "both 0 would never make progress"
    return surge, unavailable


def _new_rs_replicas(spec: Mapping[str, Any], new_rs: Mapping[str, Any] | None, old: list[dict[str, Any]]) -> int:
    """The new ReplicaSet's size this sync (``reconcileNewReplicaSet`` and ``NewRSNewReplicas``)."""
    replicas = int(spec.get("replicas", 1))
    current = _replicas(new_rs)
    if current >= replicas:
        return replicas
    surge, _ = _fenceposts(spec)
    total = current + sum(_replicas(rs) for rs in old)  # GetReplicaCountForReplicaSets: spec, not status
    return current + max(0, min(replicas + surge - total, replicas - current))


def _set_condition(status: dict[str, Any], cond: dict[str, Any], *, touch: bool = True) -> None:
    """Set a workload condition: lastTransitionTime moves with the status, lastUpdateTime when ``touch``."""
    conds = status.setdefault("conditions", [])
    stamp = now()
    for i, existing in enumerate(conds):
        if existing["type"] == cond["type"]:
            same = existing.get("status") == cond["status"]
            cond["lastTransitionTime"] = existing.get("lastTransitionTime") if same else stamp
            unchanged = same and existing.get("reason") == cond.get("reason")
            keep_update = unchanged and not touch
            cond["lastUpdateTime"] = existing.get("lastUpdateTime") if keep_update else stamp
            conds[i] = cond
            return
    cond["lastTransitionTime"] = cond["lastUpdateTime"] = stamp
    conds.append(cond)


class Controllers:
    """The kube-controller-manager loops the fake runs."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.timed_out: set[str] = set()  # Deployment uids told to exceed their progress deadline

    # -- Deployment ----------------------------------------------------------------------------

    def deployments(self) -> None:
        """One pass of the Deployment controller."""
        for d in self.store.objects(("apps", "deployments")):
            if not d["metadata"].get("deletionTimestamp"):
                self._deployment(d)

    def _deployment(self, d: dict[str, Any]) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        ns, uid = meta["namespace"], meta["uid"]
        replicas = int(spec.get("replicas", 1))
        rses = [rs for rs in self.store.objects(("apps", "replicasets"), ns) if controlled_by(rs, uid)]
        template = copy.deepcopy(spec.get("template") or {})
        hash_ = template_hash(template, (d.get("status") or {}).get("collisionCount", 0))
        new_rs = next(
            (rs for rs in rses if (rs["metadata"].get("labels") or {}).get("pod-template-hash") == hash_), None
        )
        old = [rs for rs in rses if rs is not new_rs]
        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        old_pods_left = any(
            (rs.get("status") or {}).get("replicas", 0) or (rs.get("spec") or {}).get("replicas", 0) for rs in old
        )
        created = False
        desired = 0 if recreate and old_pods_left else replicas
        if not recreate:
            desired = _new_rs_replicas(spec, new_rs, old)
        if new_rs is None:
            revision = 1 + max(
                (int((rs["metadata"].get("annotations") or {}).get(REVISION, "0")) for rs in rses), default=0
            )
            new_rs = self._create_rs(d, template, hash_, desired, revision)
            created = True
            self.timed_out.discard(uid)
        elif int((new_rs.get("spec") or {}).get("replicas", 0)) != desired:
            new_rs = self._scale(d, new_rs, desired) or new_rs
        if recreate:
            for rs in old:
                if int((rs.get("spec") or {}).get("replicas", 0)):
                    self._scale(d, rs, 0)
        else:
            self._scale_down_old(d, new_rs, old)
        rses = [rs for rs in self.store.objects(("apps", "replicasets"), ns) if controlled_by(rs, uid)]
        self._deployment_status(d, rses, new_rs["metadata"]["name"], created)

    def _scale_down_old(self, d: Mapping[str, Any], new_rs: Mapping[str, Any], old: list[dict[str, Any]]) -> None:
        """``reconcileOldReplicaSets``: old pods go while replicas - maxUnavailable stay available."""
        spec = d.get("spec") or {}
        old_count = sum(_replicas(rs) for rs in old)
        if not old_count:
            return
        _, unavailable = _fenceposts(spec)
        min_available = int(spec.get("replicas", 1)) - unavailable
        new_unavailable = _replicas(new_rs) - _available(new_rs)
        max_scaled_down = old_count + _replicas(new_rs) - min_available - new_unavailable
        if max_scaled_down <= 0:
            return
        old = sorted(old, key=lambda rs: (rs["metadata"]["creationTimestamp"], rs["metadata"]["name"]))
        sizes = [_replicas(rs) for rs in old]
        cleaned = 0  # cleanupUnhealthyReplicas: the old pods that are not available go first
        for i, rs in enumerate(old):
            if cleaned >= max_scaled_down:
                break
            if sizes[i] and sizes[i] != _available(rs):
                down = min(max_scaled_down - cleaned, sizes[i] - _available(rs))
                sizes[i] -= down
                cleaned += down
        # scaleDownOldReplicaSetsForRollingUpdate: then available ones, down to min_available
        extra = sum(_available(rs) for rs in old) + _available(new_rs) - min_available
        for i in range(len(old)):
            if extra <= 0:
                break
            down = min(sizes[i], extra)
            sizes[i] -= down
            extra -= down
        for rs, size in zip(old, sizes, strict=True):
            if size != _replicas(rs):
                self._scale(d, rs, size)

    def _create_rs(
        self, d: Mapping[str, Any], template: dict[str, Any], hash_: str, size: int, revision: int
    ) -> dict[str, Any]:
        meta, spec = d["metadata"], d.get("spec") or {}
        template.setdefault("metadata", {}).setdefault("labels", {})["pod-template-hash"] = hash_
        selector = copy.deepcopy(spec.get("selector") or {})
        selector.setdefault("matchLabels", {})["pod-template-hash"] = hash_
        replicas = int(spec.get("replicas", 1))
        surge = _int_or_percent(
            ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge"), replicas, True
        )
        rs = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta['name']}-{hash_}",
                "namespace": meta["namespace"],
                "labels": copy.deepcopy(template["metadata"]["labels"]),
                "annotations": {
                    "deployment.kubernetes.io/desired-replicas": str(replicas),
                    "deployment.kubernetes.io/max-replicas": str(replicas + surge),
                    REVISION: str(revision),
                },
                "ownerReferences": [owner_ref(d)],
            },
            "spec": {
                "replicas": size,
                "minReadySeconds": spec.get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        created = self.store.system_create(rs, manager=MANAGER)
        if size > 0:  # sync.go getNewReplicaSet: no event for a new ReplicaSet created at 0 (maxSurge 0)
            message = f"Scaled up replica set {created['metadata']['name']} from 0 to {size}"
            events.emit(self.store, d, "Normal", "ScalingReplicaSet", message, "deployment-controller")
        return created

    def _scale(self, d: Mapping[str, Any], rs: Mapping[str, Any], size: int) -> dict[str, Any] | None:
        before = int((rs.get("spec") or {}).get("replicas", 0))

        def scale(obj: dict[str, Any]) -> None:
            obj["spec"]["replicas"] = size
            obj["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/desired-replicas"] = str(
                (d.get("spec") or {}).get("replicas", 1)
            )

        out = self.store.mutate(
            ("apps", "replicasets"), rs["metadata"]["namespace"], rs["metadata"]["name"], scale, manager=MANAGER
        )
        word = "up" if size > before else "down"
        message = f"Scaled {word} replica set {rs['metadata']['name']} from {before} to {size}"
        events.emit(self.store, d, "Normal", "ScalingReplicaSet", message, "deployment-controller")
        return out

    def exceed_progress_deadline(self, namespace: str, name: str) -> None:
        """Make a Deployment's Progressing condition ProgressDeadlineExceeded on the next pass."""
        d = self.store.get(("apps", "deployments"), namespace, name)
        if d is None:
            raise KeyError(f"no Deployment {namespace}/{name}")
        self.timed_out.add(d["metadata"]["uid"])

    def _deployment_status(
        self, d: Mapping[str, Any], rses: list[dict[str, Any]], new_name: str, created: bool
    ) -> None:
        meta, spec = d["metadata"], d.get("spec") or {}
        replicas = int(spec.get("replicas", 1))
        statuses = [rs.get("status") or {} for rs in rses]
        new_status = next(((rs.get("status") or {}) for rs in rses if rs["metadata"]["name"] == new_name), {})
        total = sum(s.get("replicas", 0) for s in statuses)
        ready = sum(s.get("readyReplicas", 0) for s in statuses)
        available = sum(s.get("availableReplicas", 0) for s in statuses)
        updated = new_status.get("replicas", 0)
        strategy = spec.get("strategy") or {}
        max_unavailable = 0
        if strategy.get("type", "RollingUpdate") == "RollingUpdate" and replicas:
            max_unavailable = _int_or_percent(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable"), replicas, False
            )
        complete = updated == replicas and available == replicas and total == replicas
        uid = meta["uid"]

        def write(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            previous = {k: status.get(k) for k in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")}
            status.update(
                {
                    "observedGeneration": meta.get("generation", 1),
                    "replicas": total,
                    "updatedReplicas": updated,
                    "readyReplicas": ready,
                    "availableReplicas": available,
                }
            )
            unavailable = max(replicas - available, 0)
            if unavailable:
                status["unavailableReplicas"] = unavailable
            else:
                status.pop("unavailableReplicas", None)
            for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas"):
                if not status[key]:
                    status.pop(key)  # omitempty: a zero count is absent on the wire
            if available >= replicas - max_unavailable:
                _set_condition(
                    status,
                    {
                        "type": "Available",
                        "status": "True",
                        "reason": "MinimumReplicasAvailable",
                        "message": "Deployment has minimum availability.",
                    },
                    touch=False,
                )
            else:
                _set_condition(
                    status,
                    {
                        "type": "Available",
                        "status": "False",
                        "reason": "MinimumReplicasUnavailable",
                        "message": "Deployment does not have minimum availability.",
                    },
                    touch=False,
                )
            # the new ReplicaSet's ReplicaFailure becomes the Deployment's (deployment/sync.go calculateStatus)
            failure = next(
                (c for st in statuses for c in st.get("conditions") or () if c.get("type") == "ReplicaFailure"), None
            )
            if failure is not None:
                _set_condition(status, {k: failure[k] for k in ("type", "status", "reason", "message")}, touch=False)
            elif any(c["type"] == "ReplicaFailure" for c in status.get("conditions") or ()):
                status["conditions"] = [c for c in status["conditions"] if c["type"] != "ReplicaFailure"]
            progressed = previous != {k: status.get(k) for k in previous}
            current = next((c for c in status.get("conditions") or () if c["type"] == "Progressing"), None)
            deadline = spec.get("progressDeadlineSeconds", 600)
            stalled = (
                current is not None
                and current.get("status") == "True"
                and current.get("reason") != "NewReplicaSetAvailable"
                and time.time() - _epoch(current.get("lastUpdateTime")) > deadline
            )
            if uid in self.timed_out or (stalled and not progressed and not complete):
                cond = {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": f'ReplicaSet "{new_name}" has timed out progressing.',
                }
                _set_condition(status, cond, touch=False)
            elif complete:
                cond = {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetAvailable",
                    "message": f'ReplicaSet "{new_name}" has successfully progressed.',
                }
                _set_condition(status, cond, touch=current is None or current.get("reason") != "NewReplicaSetAvailable")
            elif created:
                cond = {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "NewReplicaSetCreated",
                    "message": f'Created new replica set "{new_name}"',
                }
                _set_condition(status, cond)
            elif progressed or current is None or current.get("status") != "True":
                cond = {
                    "type": "Progressing",
                    "status": "True",
                    "reason": "ReplicaSetUpdated",
                    "message": f'ReplicaSet "{new_name}" is progressing.',
                }
                _set_condition(status, cond)
            order = ("Available", "Progressing", "ReplicaFailure")
            status["conditions"].sort(key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))

        self.store.mutate(("apps", "deployments"), meta["namespace"], meta["name"], write, manager=MANAGER)

    # -- ReplicaSet ----------------------------------------------------------------------------

    def replicasets(self) -> None:
        """One pass of the ReplicaSet controller."""
        for rs in self.store.objects(("apps", "replicasets")):
            meta, spec = rs["metadata"], rs.get("spec") or {}
            pods = [p for p in self.store.objects(("", "pods"), meta["namespace"]) if controlled_by(p, meta["uid"])]
            active = [p for p in pods if _active(p)]
            if not meta.get("deletionTimestamp"):
                want = int(spec.get("replicas", 1))
                failure = None
                for _ in range(want - len(active)):
                    created, failure = self._create_pod(rs, f"{meta['name']}-", "replicaset-controller")
                    if created is None:
                        break
                    active.append(created)
                self._replica_failure(rs, failure)
                if len(active) > want:
                    # getPodsToDelete: unscheduled, then not ready, then the newest
                    active.sort(
                        key=lambda p: (
                            bool(p["spec"].get("nodeName")),
                            _pod_ready(p),
                            p["metadata"]["creationTimestamp"],
                        )
                    )
                    for pod in active[: len(active) - want]:
                        self.store.delete_as(("", "pods"), pod["metadata"]["namespace"], pod["metadata"]["name"])
                        events.emit(
                            self.store,
                            rs,
                            "Normal",
                            "SuccessfulDelete",
                            f"Deleted pod: {pod['metadata']['name']}",
                            "replicaset-controller",
                        )
                    active = active[len(active) - want :]
            ready = sum(1 for p in active if _pod_ready(p))
            labels_ok = sum(
                1 for p in active if selector_matches(spec.get("selector") or {}, p["metadata"].get("labels"))
            )

            def write(obj: dict[str, Any], n: int = len(active), ready: int = ready, labeled: int = labels_ok) -> None:
                status = obj.setdefault("status", {})
                status.update(
                    {
                        "replicas": n,
                        "fullyLabeledReplicas": labeled,
                        "readyReplicas": ready,
                        "availableReplicas": ready,
                        "observedGeneration": obj["metadata"].get("generation", 1),
                    }
                )
                for key in ("fullyLabeledReplicas", "readyReplicas", "availableReplicas"):
                    if not status[key]:
                        status.pop(key)

            self.store.mutate(("apps", "replicasets"), meta["namespace"], meta["name"], write, manager=MANAGER)

    def _replica_failure(self, rs: Mapping[str, Any], failure: str | None) -> None:
        """The ReplicaFailure condition (FailedCreate) while pods cannot be created, removed once they can."""

        def write(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            conds = [c for c in status.get("conditions") or () if c.get("type") != "ReplicaFailure"]
            if failure is not None:
                previous = next((c for c in status.get("conditions") or () if c.get("type") == "ReplicaFailure"), None)
                stamp = previous["lastTransitionTime"] if previous else now()
                conds.append(
                    {
                        "type": "ReplicaFailure",
                        "status": "True",
                        "reason": "FailedCreate",
                        "message": failure,
                        "lastTransitionTime": stamp,
                    }
                )
            if conds:
                status["conditions"] = conds
            else:
                status.pop("conditions", None)

        self.store.mutate(
            ("apps", "replicasets"), rs["metadata"]["namespace"], rs["metadata"]["name"], write, manager=MANAGER
        )

    def _create_pod(
        self, owner: Mapping[str, Any], prefix: str, component: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        """Create a pod from the owner's template; (pod, None), or (None, error) with a FailedCreate event."""
        template = (owner.get("spec") or {}).get("template") or {}
        tmeta = template.get("metadata") or {}
        pod: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": prefix,
                "namespace": owner["metadata"]["namespace"],
                "labels": copy.deepcopy(tmeta.get("labels") or {}),
                "ownerReferences": [owner_ref(owner)],
            },
            "spec": copy.deepcopy(template.get("spec") or {}),
        }
        if tmeta.get("annotations"):
            pod["metadata"]["annotations"] = copy.deepcopy(tmeta["annotations"])
        try:
            created = self.store.system_create(pod, manager=MANAGER)
        except KubeError as exc:
            events.emit(self.store, owner, "Warning", "FailedCreate", f"Error creating: {exc.message}", component)
            return None, exc.message
        events.emit(
            self.store, owner, "Normal", "SuccessfulCreate", f"Created pod: {created['metadata']['name']}", component
        )
        return created, None

    # -- Job -----------------------------------------------------------------------------------

    def jobs(self) -> None:
        """One pass of the Job controller."""
        for job in self.store.objects(("batch", "jobs")):
            meta, spec, status = job["metadata"], job.get("spec") or {}, job.get("status") or {}
            if meta.get("deletionTimestamp") or spec.get("suspend"):
                continue
            finished = any(
                c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                for c in status.get("conditions") or ()
            )
            pods = [p for p in self.store.objects(("", "pods"), meta["namespace"]) if controlled_by(p, meta["uid"])]
            succeeded = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Succeeded")
            failed = sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Failed")
            active = [p for p in pods if _active(p)]
            completions = int(spec.get("completions") or 1)
            condition: dict[str, Any] | None = None
            if finished:
                pass
            elif succeeded >= completions:
                condition = {"type": "Complete", "status": "True"}
                events.emit(self.store, job, "Normal", "Completed", "Job completed", "job-controller")
            elif failed > int(spec.get("backoffLimit", 6)):
                condition = {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
                for pod in active:
                    self.store.delete_as(("", "pods"), pod["metadata"]["namespace"], pod["metadata"]["name"])
                events.emit(
                    self.store,
                    job,
                    "Warning",
                    "BackoffLimitExceeded",
                    "Job has reached the specified backoff limit",
                    "job-controller",
                )
                active = []
            else:
                want = min(int(spec.get("parallelism", 1)), completions - succeeded)
                for _ in range(want - len(active)):
                    created, _ = self._create_pod(job, f"{meta['name']}-", "job-controller")
                    if created is None:
                        break
                    active.append(created)
            if finished:
                continue
            counts = {
                "active": len(active),
                "succeeded": succeeded,
                "failed": failed,
                "ready": sum(1 for p in active if _pod_ready(p)),
            }

            def write(
                obj: dict[str, Any], counts: dict[str, int] = counts, condition: dict[str, Any] | None = condition
            ) -> None:
                st = obj.setdefault("status", {})
                st.setdefault("startTime", now())
                st["uncountedTerminatedPods"] = {}
                for key, value in counts.items():
                    if value or key == "ready":
                        st[key] = value
                    else:
                        st.pop(key, None)
                if condition is not None:
                    stamp = now()
                    st.setdefault("conditions", []).append(
                        {**condition, "lastProbeTime": stamp, "lastTransitionTime": stamp}
                    )
                    if condition["type"] == "Complete":
                        st["completionTime"] = stamp
                    st.pop("active", None)

            self.store.mutate(("batch", "jobs"), meta["namespace"], meta["name"], write, manager=MANAGER)

    # -- garbage collector, namespace controller, pod GC ---------------------------------------

    def garbage_collector(self) -> None:
        """One pass: finalizers of deletions in progress, then dependents of vanished owners."""
        store = self.store
        everything = store.all_objects()
        uids = {obj["metadata"].get("uid") for _, obj in everything}
        for key, obj in everything:
            meta = obj["metadata"]
            finalizers = meta.get("finalizers") or []
            if not meta.get("deletionTimestamp"):
                continue
            if "orphan" in finalizers:
                for rt, dep in store.dependents(meta["uid"]):

                    def orphan(o: dict[str, Any], uid: str = meta["uid"]) -> None:
                        refs = [r for r in o["metadata"].get("ownerReferences") or () if r.get("uid") != uid]
                        if refs:
                            o["metadata"]["ownerReferences"] = refs
                        else:
                            o["metadata"].pop("ownerReferences", None)

                    store.mutate(
                        rt.key,
                        dep["metadata"].get("namespace", ""),
                        dep["metadata"]["name"],
                        orphan,
                        manager="garbage-collector",
                    )
                self._drop_finalizer(key, "orphan")
            if "foregroundDeletion" in finalizers:
                deps = store.dependents(meta["uid"])
                for rt, dep in deps:
                    if not dep["metadata"].get("deletionTimestamp"):
                        store.delete_as(
                            rt.key,
                            dep["metadata"].get("namespace", ""),
                            dep["metadata"]["name"],
                            propagation="Foreground",
                        )
                blocking = [
                    dep
                    for _, dep in store.dependents(meta["uid"])
                    if any(
                        r.get("uid") == meta["uid"] and r.get("blockOwnerDeletion")
                        for r in dep["metadata"].get("ownerReferences") or ()
                    )
                ]
                if not blocking:
                    self._drop_finalizer(key, "foregroundDeletion")
        for key, obj in everything:
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and not meta.get("deletionTimestamp") and all(r.get("uid") not in uids for r in refs):
                store.delete_as(key[:2], key[2], key[3])

    def _drop_finalizer(self, key: tuple[str, str, str, str], finalizer: str) -> None:
        def drop(o: dict[str, Any]) -> None:
            fins = [f for f in o["metadata"].get("finalizers") or () if f != finalizer]
            if fins:
                o["metadata"]["finalizers"] = fins
            else:
                o["metadata"].pop("finalizers", None)

        self.store.mutate(key[:2], key[2], key[3], drop, manager="garbage-collector")

    def namespaces(self) -> None:
        """The namespace controller: empty a terminating namespace, then release it."""
        store = self.store
        for ns in store.objects(("", "namespaces")):
            if not ns["metadata"].get("deletionTimestamp"):
                continue
            name = ns["metadata"]["name"]
            content = [(k, o) for k, o in store.all_objects() if k[2] == name]  # cluster-scoped keys have ""
            for key, obj in content:
                if not obj["metadata"].get("deletionTimestamp"):
                    store.delete_as(key[:2], key[2], key[3])
            if not content:

                def release(o: dict[str, Any]) -> None:
                    o.setdefault("spec", {})["finalizers"] = []

                store.mutate(("", "namespaces"), "", name, release, manager="namespace-controller")

    def pod_gc(self) -> None:
        """Delete pods bound to nodes that are gone."""
        nodes = {n["metadata"]["name"] for n in self.store.objects(("", "nodes"))}
        for pod in self.store.objects(("", "pods")):
            node = (pod.get("spec") or {}).get("nodeName")
            if node and node not in nodes:
                self.store.remove(("", "pods"), pod["metadata"]["namespace"], pod["metadata"]["name"])
