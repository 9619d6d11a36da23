"""object_state: current / in-progress / failed for each applied object, after kstatus."""

from __future__ import annotations

from vllm_fleet.targets.kubernetes.cluster.rules.base import (
    Obj,
    ObjectState,
    _conditions,
    _container_statuses,
    _get,
    _group_kind,
    _int,
    _list,
    _one_line,
    _terminated_summary,
    _Verdict,
    _waiting_reason,
)

# ---------------------------------------------------------------------------------------------
# object_state


def object_state(obj: Obj, *, wait_for_first_consumer: bool = False, pods_scheduled: bool = False) -> ObjectState:
    """Judge one object the way kstatus does (current / in-progress / failed) with a readable message.

    ``wait_for_first_consumer`` says the PVC's StorageClass binds on first consumer, and
    ``pods_scheduled`` that a pod using it has been scheduled: the PVC then counts as current
    although still Pending, since it binds only as that pod starts (see ``_pvc``).
    """
    status, message = _judge(obj, wait_for_first_consumer, pods_scheduled)
    return ObjectState(str(obj.get("kind", "")), str(_get(obj, "metadata.name", "")), status, _one_line(message))


def _judge(obj: Obj, wait_for_first_consumer: bool, pods_scheduled: bool) -> _Verdict:
    # kstatus status.go Compute: the generic properties decide first, then the kind's own rule,
    # and an unknown kind with nothing to say is current.
    generic = _generic(obj)
    if generic is not None:
        return generic
    key = _group_kind(obj)
    if key == "PersistentVolumeClaim":
        return _pvc(obj, wait_for_first_consumer, pods_scheduled)
    rule = _RULES.get(key)
    return rule(obj) if rule is not None else _by_conditions(obj)


def _generic(obj: Obj) -> _Verdict | None:
    """Deletion, an unobserved generation, and the standard Reconciling/Stalled conditions (generic.go)."""
    if _get(obj, "metadata.deletionTimestamp"):
        finalizers = _get(obj, "metadata.finalizers", [])
        waiting = f": waiting for finalizers {', '.join(map(str, finalizers))}" if finalizers else ""
        return "in-progress", f"terminating{waiting}"
    generation = _get(obj, "metadata.generation")
    observed = _get(obj, "status.observedGeneration")
    # kstatus compares with !=; an observed generation ahead of ours means a newer write than the
    # one we read, which the next watch event brings, so only "behind" waits.
    if isinstance(generation, int) and isinstance(observed, int) and observed < generation:
        return "in-progress", f"the controller has not seen generation {generation} yet (observed {observed})"
    conditions = _conditions(obj)
    if _get(conditions, "Stalled.status") == "True":
        return "failed", _condition_text(conditions["Stalled"], "stalled")
    if _get(conditions, "Reconciling.status") == "True":
        return "in-progress", _condition_text(conditions["Reconciling"], "reconciling")
    return None


def _condition_text(condition: Obj, fallback: str) -> str:
    reason, message = condition.get("reason") or "", condition.get("message") or ""
    if reason and message:
        return f"{reason}: {message}"
    return message or reason or fallback


def _deployment(obj: Obj) -> _Verdict:
    """Replica counts and the Progressing/Available conditions (core.go deploymentConditions)."""
    conditions = _conditions(obj)
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return "failed", f"progress deadline exceeded: {progressing.get('message') or 'the rollout stalled'}"
    if _get(conditions, "ReplicaFailure.status") == "True":
        # The ReplicaSet cannot create pods (quota, an admission webhook, PodSecurity): no pod exists
        # for pod_problem to look at, so the condition's text is the only cause there is.
        return "in-progress", f"cannot create pods: {_condition_text(conditions['ReplicaFailure'], 'ReplicaFailure')}"
    want = _int(obj, "spec.replicas", 1)
    have = _int(obj, "status.replicas")
    updated, ready = _int(obj, "status.updatedReplicas"), _int(obj, "status.readyReplicas")
    available = _int(obj, "status.availableReplicas")
    if want == 0:
        # kstatus leaves this open ("TODO spec.replicas zero case"): scaled to zero is done once
        # the old pods are gone, whatever the conditions say.
        return ("in-progress", f"scaling to 0: {have} pods still to stop") if have else ("current", "scaled to 0")
    counts = _replica_counts(want, have, updated, ready, available)
    if counts is not None:
        return "in-progress", counts
    # A Progressing condition exists only with a progress deadline (deployment controller,
    # progress.go); where it exists the rollout is done at NewReplicaSetAvailable.
    if progressing and not (
        progressing.get("status") == "True" and progressing.get("reason") == "NewReplicaSetAvailable"
    ):
        return "in-progress", f"rolling out ({progressing.get('reason') or 'Progressing'})"
    if "Available" in conditions and conditions["Available"].get("status") != "True":
        return "in-progress", f"not available: {_condition_text(conditions['Available'], 'Available is not True')}"
    return "current", f"{ready}/{want} replicas ready"


def _replica_counts(want: int, have: int, updated: int, ready: int, available: int) -> str | None:
    """The first count that falls short, in kstatus's order; None when all are met."""
    if have < want:
        return f"{have}/{want} replicas created"
    if updated < want:
        return f"{updated}/{want} replicas updated"
    if have > want:
        return f"{have - want} old replicas still to stop"
    # kstatus checks availability before readiness; ready comes first here because "ready" is the
    # word a person waits on, and available <= ready, so the verdict is the same.
    if ready < want:
        return f"{ready}/{want} replicas ready"
    if available < want:
        return f"{available}/{want} replicas available"
    return None


def _statefulset(obj: Obj) -> _Verdict:
    """Counts, partition and revision (core.go stsConditions; the controller sets no conditions)."""
    if _get(obj, "spec.updateStrategy.type") == "OnDelete":
        return "current", "updateStrategy OnDelete: pods update when deleted"
    want = _int(obj, "spec.replicas", 1)
    have, ready = _int(obj, "status.replicas"), _int(obj, "status.readyReplicas")
    current, updated = _int(obj, "status.currentReplicas"), _int(obj, "status.updatedReplicas")
    if have < want:
        return "in-progress", f"{have}/{want} replicas created"
    if ready < want:
        return "in-progress", f"{ready}/{want} replicas ready"
    if have > want:
        return "in-progress", f"{have - want} replicas still to stop"
    partition = _int(obj, "spec.updateStrategy.rollingUpdate.partition", -1)
    if partition != -1:
        # https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/#partitions
        if updated < want - partition:
            return "in-progress", f"{updated}/{want - partition} replicas updated (partition {partition})"
        return "current", f"partitioned rollout done: {updated} replicas updated"
    if current < want:
        return "in-progress", f"{current}/{want} replicas at the current revision"
    if _get(obj, "status.currentRevision", "") != _get(obj, "status.updateRevision", ""):
        return "in-progress", f"rolling out revision {_get(obj, 'status.updateRevision', '?')}"
    return "current", f"{ready}/{want} replicas ready"


def _replicaset(obj: Obj) -> _Verdict:
    """Counts and ReplicaFailure (core.go replicasetConditions)."""
    conditions = _conditions(obj)
    if _get(conditions, "ReplicaFailure.status") == "True":
        return "in-progress", f"cannot create pods: {_condition_text(conditions['ReplicaFailure'], 'ReplicaFailure')}"
    want = _int(obj, "spec.replicas", 1)
    have, labelled = _int(obj, "status.replicas"), _int(obj, "status.fullyLabeledReplicas")
    ready, available = _int(obj, "status.readyReplicas"), _int(obj, "status.availableReplicas")
    if labelled < want:
        return "in-progress", f"{labelled}/{want} replicas labelled"
    if ready < want:
        return "in-progress", f"{ready}/{want} replicas ready"
    if available < want:
        return "in-progress", f"{available}/{want} replicas available"
    if have > want:
        return "in-progress", f"{have - want} replicas still to stop"
    return "current", f"{ready}/{want} replicas ready"


def _daemonset(obj: Obj) -> _Verdict:
    """Scheduled/updated/available/ready counts (core.go daemonsetConditions)."""
    # kstatus's checkGenerationSet: the DaemonSet controller always writes observedGeneration, so
    # its absence means the controller has not looked yet (not "this kind has no such field").
    if not isinstance(_get(obj, "status.observedGeneration"), int):
        return "in-progress", "the DaemonSet controller has not observed it yet"
    desired = _int(obj, "status.desiredNumberScheduled", -1)
    if desired == -1:
        return "in-progress", "the DaemonSet controller has not counted its nodes yet"
    for field, word in (
        ("currentNumberScheduled", "scheduled"),
        ("updatedNumberScheduled", "updated"),
        ("numberAvailable", "available"),
        ("numberReady", "ready"),
    ):
        if _int(obj, f"status.{field}") < desired:
            return "in-progress", f"{_int(obj, f'status.{field}')}/{desired} pods {word}"
    return "current", f"{desired}/{desired} pods ready"


def _job(obj: Obj) -> _Verdict:
    """Complete -> current, Failed -> failed, anything else in progress (after core.go jobConditions).

    Deliberately unlike kstatus, which calls a started Job current: our Jobs download weights, and
    the engine must not start on half a cache, so a Job is current only once it has completed.
    """
    conditions = _conditions(obj)
    completions = _int(obj, "spec.completions", _int(obj, "spec.parallelism", 1))
    succeeded, active, failed = _int(obj, "status.succeeded"), _int(obj, "status.active"), _int(obj, "status.failed")
    if _get(conditions, "Complete.status") == "True":
        return "current", f"complete: {succeeded}/{completions} succeeded"
    # FailureTarget comes before Failed while the failed pods terminate (pkg/controller/job, 1.27+).
    for kind in ("Failed", "FailureTarget"):
        if _get(conditions, f"{kind}.status") == "True":
            return "failed", f"failed ({failed} pods failed): {_condition_text(conditions[kind], kind)}"
    if _get(conditions, "Suspended.status") == "True":
        # kstatus calls a suspended Job current; ours would never complete, so it is still waited on.
        return "in-progress", "suspended: it will not complete until resumed"
    if not _get(obj, "status.startTime"):
        return "in-progress", "not started yet"
    return "in-progress", f"running: {active} active, {succeeded}/{completions} succeeded, {failed} failed"


# The scheduler writes this annotation on a WaitForFirstConsumer claim once it has picked a node for
# the consuming pod (pkg/controller/volume/persistentvolume/util: AnnSelectedNode).
_SELECTED_NODE = "volume.kubernetes.io/selected-node"


def _pvc(obj: Obj, wait_for_first_consumer: bool, pods_scheduled: bool) -> _Verdict:
    """Bound -> current, Lost -> failed, Pending waits (after core.go pvcConditions).

    Deliberately unlike kstatus, which waits for Bound: a claim whose StorageClass has
    volumeBindingMode WaitForFirstConsumer binds only after a pod using it is scheduled, and a
    wait that holds the pods back until the claim is Bound never ends. Once the pod is
    scheduled the claim is current (the pod's own status then covers the binding).
    """
    phase = _get(obj, "status.phase", "Pending")
    if phase == "Bound":
        size = _get(obj, "status.capacity.storage")
        volume = _get(obj, "spec.volumeName", "a volume")
        return "current", f"bound to {volume}" + (f" ({size})" if size else "")
    if phase == "Lost":
        return "failed", f"its PersistentVolume {_get(obj, 'spec.volumeName', '')} is gone (Lost): recreate the claim"
    if wait_for_first_consumer:
        if pods_scheduled or _SELECTED_NODE in _get(obj, "metadata.annotations", {}):
            return "current", "binds as its pod starts (WaitForFirstConsumer); the pod is scheduled"
        return "in-progress", "waiting for a pod to be scheduled (WaitForFirstConsumer)"
    return "in-progress", f"{phase}: waiting for a volume to be provisioned and bound"


def _pod(obj: Obj) -> _Verdict:
    """Phase, readiness and crash loops (core.go podConditions).

    Deliberately unlike kstatus: a Failed pod is failed (kstatus calls it current, "completed");
    and an unschedulable pod stays in progress (kstatus fails it after 15 s), since whether
    waiting helps depends on the autoscaler, which ``pod_problem`` reads from the events.
    """
    phase = _get(obj, "status.phase", "")
    if phase == "Succeeded":
        return "current", "completed"
    if phase == "Failed":
        why = (
            _get(obj, "status.message")
            or _get(obj, "status.reason")
            or _terminated_summary(obj)
            or "a container failed"
        )
        return "failed", f"failed: {why}"
    if phase == "Running":
        if _get(_conditions(obj), "Ready.status") == "True":
            return "current", "running and ready"
        looping = [s.get("name", "?") for s in _container_statuses(obj) if _waiting_reason(s) == "CrashLoopBackOff"]
        if looping:
            return "failed", f"crash-looping: {', '.join(looping)}"
        statuses = _list(obj, "status.containerStatuses")
        return "in-progress", f"running, {sum(bool(s.get('ready')) for s in statuses)}/{len(statuses)} containers ready"
    if phase == "Pending":
        scheduled = _conditions(obj).get("PodScheduled", {})
        if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
            return "in-progress", f"unschedulable: {scheduled.get('message') or 'no node fits'}"
        waiting = [f"{s.get('name')} {_waiting_reason(s)}" for s in _container_statuses(obj) if _waiting_reason(s)]
        return "in-progress", "pending" + (f": {', '.join(waiting)}" if waiting else "")
    if phase == "Unknown":
        return "in-progress", "phase Unknown: its node stopped reporting"
    return "in-progress", "not yet seen by a kubelet"


def _service(obj: Obj) -> _Verdict:
    """A LoadBalancer Service needs an address; any other Service is current (after core.go serviceConditions).

    Deliberately unlike kstatus, which is satisfied by a clusterIP: the endpoint a person is
    given is the load balancer's, so we wait for ``status.loadBalancer.ingress``.
    """
    kind = _get(obj, "spec.type", "ClusterIP")
    if kind != "LoadBalancer":
        return "current", f"{kind} {_get(obj, 'spec.clusterIP', '')}".strip()
    ingress = _list(obj, "status.loadBalancer.ingress")
    addresses = [str(i.get("ip") or i.get("hostname")) for i in ingress if i.get("ip") or i.get("hostname")]
    if not addresses:
        return "in-progress", "waiting for the load balancer's address"
    return "current", f"load balancer at {', '.join(addresses)}"


def _pdb(obj: Obj) -> _Verdict:
    """Current once the disruption controller has observed it (core.go pdbConditions; generic.go did the check)."""
    if not isinstance(_get(obj, "status"), dict):
        return "current", "applied"
    healthy, desired = _int(obj, "status.currentHealthy"), _int(obj, "status.desiredHealthy")
    allowed = _int(obj, "status.disruptionsAllowed")
    return "current", f"{healthy}/{desired} healthy pods, {allowed} disruptions allowed"


def _hpa(obj: Obj) -> _Verdict:
    """kstatus has no HPA rule (current); the message names a metric it cannot read, which a person wants to know."""
    if not isinstance(_get(obj, "status"), dict):
        return "current", "applied"
    conditions = _conditions(obj)
    text = f"{_int(obj, 'status.currentReplicas')} replicas (min {_int(obj, 'spec.minReplicas', 1)}, "
    text += f"max {_int(obj, 'spec.maxReplicas')})"
    if _get(conditions, "ScalingActive.status") == "False":
        text += f"; not scaling: {_condition_text(conditions['ScalingActive'], 'ScalingActive is False')}"
    return "current", text


def _crd(obj: Obj) -> _Verdict:
    """NamesAccepted / Established (core.go crdConditions)."""
    conditions = _conditions(obj)
    names = conditions.get("NamesAccepted", {})
    if names.get("status") == "False":
        return "failed", _condition_text(names, "names not accepted")
    established = conditions.get("Established", {})
    if established.get("status") == "True":
        return "current", "established"
    if established.get("status") == "False" and established.get("reason") != "Installing":
        return "failed", _condition_text(established, "not established")
    return "in-progress", "installing"


# The condition that means "ready" where a kind does not call it Ready (Gateway API: Programmed).
_READY_CONDITION = {"gateway.networking.k8s.io/Gateway": "Programmed"}


def _by_conditions(obj: Obj) -> _Verdict:
    """Kinds without a rule (custom resources, ConfigMaps, Secrets...): a Ready condition if there is one.

    kstatus stops at Reconciling/Stalled (done in ``_generic``) and calls the rest current; a
    Ready condition is what most operators (KEDA, cert-manager, Flux) publish, so we read it too.
    """
    name = _READY_CONDITION.get(_group_kind(obj), "Ready")
    condition = _conditions(obj).get(name)
    if condition is None:
        return "current", "applied"
    if condition.get("status") == "True":
        return "current", condition.get("message") or name.lower()
    return "in-progress", _condition_text(condition, f"{name} is {condition.get('status', 'Unknown')}")


_RULES = {
    "apps/Deployment": _deployment,
    "extensions/Deployment": _deployment,
    "apps/StatefulSet": _statefulset,
    "apps/ReplicaSet": _replicaset,
    "apps/DaemonSet": _daemonset,
    "batch/Job": _job,
    "Pod": _pod,
    "Service": _service,
    "policy/PodDisruptionBudget": _pdb,
    "autoscaling/HorizontalPodAutoscaler": _hpa,
    "apiextensions.k8s.io/CustomResourceDefinition": _crd,
}
