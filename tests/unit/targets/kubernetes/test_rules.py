"""The pure status rules on recorded objects: kstatus-style object states, doomed pods, GPU accounting.

Objects are dict literals as the API server returns them (kubectl get -o json, trimmed to the
fields the rules read); the texts are the ones the kubelet, the scheduler and cluster-autoscaler
write, so a rule that matches here matches a real cluster.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from vllm_fleet.targets.kubernetes.cluster.rules import gpu_free, node_fits, object_state, pod_problem

Obj = dict[str, Any]

NOW = datetime(2025, 6, 3, 10, 0, 0, tzinfo=UTC)
IMAGE = "ghcr.io/vllm-fleet/vllm-fleet:0.1.0-vllm0.11.0"


def _ago(seconds: float) -> str:
    return (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _with(obj: Obj, path: str, value: Any) -> Obj:
    """A deep copy of ``obj`` with ``path`` (dotted) set to ``value``."""
    out = copy.deepcopy(obj)
    cur = out
    *parents, last = path.split(".")
    for key in parents:
        cur = cur.setdefault(key, {})
    cur[last] = value
    return out


# --------------------------------------------------------------------------------------------
# Recorded objects

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "qwen-7b", "namespace": "default", "generation": 2},
    "spec": {"replicas": 2, "progressDeadlineSeconds": 600},
    "status": {
        "observedGeneration": 2,
        "replicas": 2,
        "updatedReplicas": 2,
        "readyReplicas": 2,
        "availableReplicas": 2,
        "conditions": [
            {
                "type": "Available",
                "status": "True",
                "reason": "MinimumReplicasAvailable",
                "message": "Deployment has minimum availability.",
            },
            {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": 'ReplicaSet "qwen-7b-6d5f8b7c9d" has successfully progressed.',
            },
        ],
    },
}

DEPLOYMENT_ROLLING = _with(
    _with(DEPLOYMENT, "status.updatedReplicas", 1),
    "status.conditions",
    [
        {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
        {
            "type": "Progressing",
            "status": "True",
            "reason": "ReplicaSetUpdated",
            "message": 'ReplicaSet "qwen-7b-7f9c6b5d4e" is progressing.',
        },
    ],
)

DEPLOYMENT_STALLED = _with(
    _with(DEPLOYMENT, "status.readyReplicas", 1),
    "status.conditions",
    [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {
            "type": "Progressing",
            "status": "False",
            "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "qwen-7b-6d5f8b7c9d" has timed out progressing.',
        },
    ],
)

DEPLOYMENT_QUOTA = {
    **DEPLOYMENT,
    "status": {
        "observedGeneration": 2,
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "reason": "FailedCreate",
                "message": 'pods "qwen-7b-6d5f8b7c9d-8kq2n" is forbidden: exceeded quota: gpu-quota, requested: '
                "requests.nvidia.com/gpu=1, used: requests.nvidia.com/gpu=8, limited: requests.nvidia.com/gpu=8",
            }
        ],
    },
}

STATEFULSET = {
    "apiVersion": "apps/v1",
    "kind": "StatefulSet",
    "metadata": {"name": "registry-db", "generation": 1},
    "spec": {"replicas": 1, "updateStrategy": {"type": "RollingUpdate"}},
    "status": {
        "observedGeneration": 1,
        "replicas": 1,
        "readyReplicas": 1,
        "currentReplicas": 1,
        "updatedReplicas": 1,
        "currentRevision": "registry-db-5d8f7c",
        "updateRevision": "registry-db-5d8f7c",
    },
}

REPLICASET = {
    "apiVersion": "apps/v1",
    "kind": "ReplicaSet",
    "metadata": {"name": "qwen-7b-6d5f8b7c9d", "generation": 1},
    "spec": {"replicas": 2},
    "status": {
        "observedGeneration": 1,
        "replicas": 2,
        "fullyLabeledReplicas": 2,
        "readyReplicas": 1,
        "availableReplicas": 1,
    },
}

DAEMONSET = {
    "apiVersion": "apps/v1",
    "kind": "DaemonSet",
    "metadata": {"name": "nvidia-device-plugin", "generation": 1},
    "status": {
        "observedGeneration": 1,
        "desiredNumberScheduled": 3,
        "currentNumberScheduled": 3,
        "updatedNumberScheduled": 3,
        "numberAvailable": 3,
        "numberReady": 3,
    },
}

JOB_RUNNING = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "qwen-7b-stage", "generation": 1},
    "spec": {"completions": 1, "parallelism": 1, "backoffLimit": 3},
    "status": {"startTime": _ago(120), "active": 1, "ready": 1, "terminating": 0},
}

JOB_COMPLETE = {
    **JOB_RUNNING,
    "status": {
        "startTime": _ago(600),
        "completionTime": _ago(10),
        "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
            {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
        ],
    },
}

JOB_FAILED = {
    **JOB_RUNNING,
    "status": {
        "startTime": _ago(600),
        "failed": 4,
        "conditions": [
            {
                "type": "FailureTarget",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            },
            {
                "type": "Failed",
                "status": "True",
                "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit",
            },
        ],
    },
}

PVC_BOUND = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "qwen-7b-weights", "namespace": "default"},
    "spec": {"storageClassName": "premium-rwo", "volumeName": "pvc-3f6e2a1c-9b7d-4e55-a1c2-7d0e9f8b6a41"},
    "status": {"phase": "Bound", "accessModes": ["ReadWriteOnce"], "capacity": {"storage": "100Gi"}},
}

PVC_PENDING = {
    "apiVersion": "v1",
    "kind": "PersistentVolumeClaim",
    "metadata": {"name": "qwen-7b-weights", "namespace": "default"},
    "spec": {"storageClassName": "premium-rwo"},
    "status": {"phase": "Pending"},
}

POD_READY = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "qwen-7b-6d5f8b7c9d-x2x7q", "namespace": "default", "uid": "5b1c0a3e"},
    "spec": {"nodeName": "gke-fleet-l4-pool-1a2b3c4d-7xkq", "containers": [{"name": "vllm", "image": IMAGE}]},
    "status": {
        "phase": "Running",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": _ago(900)},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "True"},
        ],
        "containerStatuses": [
            {
                "name": "vllm",
                "image": IMAGE,
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": _ago(600)}},
            }
        ],
    },
}

SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "qwen-7b"},
    "spec": {"type": "ClusterIP", "clusterIP": "10.12.4.87"},
    "status": {"loadBalancer": {}},
}


# --------------------------------------------------------------------------------------------
# object_state: generic rules (kstatus generic.go)


def test_a_terminating_object_is_in_progress_whatever_its_counts():
    state = object_state(_with(DEPLOYMENT, "metadata.deletionTimestamp", _ago(5)))
    assert (state.status, state.message) == ("in-progress", "terminating")
    finalized = _with(PVC_BOUND, "metadata.deletionTimestamp", _ago(5))
    finalized["metadata"]["finalizers"] = ["kubernetes.io/pvc-protection"]
    assert object_state(finalized).message == "terminating: waiting for finalizers kubernetes.io/pvc-protection"


def test_a_generation_the_controller_has_not_observed_is_in_progress():
    state = object_state(_with(DEPLOYMENT, "metadata.generation", 3))
    assert state.status == "in-progress"
    assert "generation 3" in state.message and "observed 2" in state.message


def test_stalled_and_reconciling_conditions_decide_for_any_kind():
    stalled = {"type": "Stalled", "status": "True", "reason": "InvalidSpec", "message": "spec.foo is required"}
    obj = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "status": {}}
    assert object_state(_with(obj, "status.conditions", [stalled])).status == "failed"
    reconciling = {"type": "Reconciling", "status": "True", "message": "creating the bucket"}
    state = object_state(_with(obj, "status.conditions", [reconciling]))
    assert (state.status, state.message) == ("in-progress", "creating the bucket")


# object_state: workloads (kstatus core.go)


def test_a_deployment_with_every_replica_ready_is_current():
    state = object_state(DEPLOYMENT)
    assert (state.kind, state.name, state.status, state.message) == (
        "Deployment",
        "qwen-7b",
        "current",
        "2/2 replicas ready",
    )


def test_a_deployment_mid_rollout_is_in_progress():
    state = object_state(DEPLOYMENT_ROLLING)
    assert (state.status, state.message) == ("in-progress", "1/2 replicas updated")


def test_a_deployment_waiting_on_readiness_says_how_many_are_ready():
    state = object_state(_with(DEPLOYMENT, "status.readyReplicas", 1))
    assert (state.status, state.message) == ("in-progress", "1/2 replicas ready")


def test_a_surge_pod_still_to_stop_keeps_the_rollout_in_progress():
    state = object_state(_with(DEPLOYMENT, "status.replicas", 3))
    assert (state.status, state.message) == ("in-progress", "1 old replicas still to stop")


def test_counts_met_but_progressing_not_yet_at_new_replicaset_available_is_in_progress():
    obj = _with(DEPLOYMENT_ROLLING, "status.updatedReplicas", 2)
    assert object_state(obj).message == "rolling out (ReplicaSetUpdated)"


def test_a_deployment_past_its_progress_deadline_is_failed():
    state = object_state(DEPLOYMENT_STALLED)
    assert state.status == "failed"
    assert state.message == 'progress deadline exceeded: ReplicaSet "qwen-7b-6d5f8b7c9d" has timed out progressing.'


def test_a_deployment_that_cannot_create_pods_names_the_cause():
    state = object_state(DEPLOYMENT_QUOTA)
    assert state.status == "in-progress"
    assert state.message.startswith("cannot create pods: FailedCreate:") and "exceeded quota" in state.message


def test_a_deployment_scaled_to_zero_is_current_once_its_pods_are_gone():
    zero = _with(DEPLOYMENT, "spec.replicas", 0)
    zero["status"] = {"observedGeneration": 2, "conditions": DEPLOYMENT["status"]["conditions"]}
    assert (object_state(zero).status, object_state(zero).message) == ("current", "scaled to 0")
    stopping = _with(zero, "status.replicas", 1)
    assert object_state(stopping).status == "in-progress"


def test_a_new_deployment_the_controller_has_not_touched_is_in_progress():
    fresh = {k: v for k, v in DEPLOYMENT.items() if k != "status"}
    assert object_state(fresh).message == "0/2 replicas created"


def test_statefulset_rules():
    assert object_state(STATEFULSET).status == "current"
    assert object_state(_with(STATEFULSET, "status.readyReplicas", 0)).message == "0/1 replicas ready"
    rolling = _with(STATEFULSET, "status.updateRevision", "registry-db-6c9e1a")
    assert (object_state(rolling).status, object_state(rolling).message) == (
        "in-progress",
        "rolling out revision registry-db-6c9e1a",
    )
    assert object_state(_with(STATEFULSET, "spec.updateStrategy", {"type": "OnDelete"})).status == "current"


def test_replicaset_rules():
    assert (object_state(REPLICASET).status, object_state(REPLICASET).message) == ("in-progress", "1/2 replicas ready")
    ready = _with(_with(REPLICASET, "status.readyReplicas", 2), "status.availableReplicas", 2)
    assert object_state(ready).status == "current"


def test_daemonset_rules():
    assert object_state(DAEMONSET).status == "current"
    assert object_state(_with(DAEMONSET, "status.numberReady", 2)).message == "2/3 pods ready"
    # kstatus checkGenerationSet: without observedGeneration the controller has not looked yet.
    unobserved = copy.deepcopy(DAEMONSET)
    del unobserved["status"]["observedGeneration"]
    assert object_state(unobserved).status == "in-progress"


# Jobs: deliberately unlike kstatus, a running Job is not current.


def test_a_running_download_job_is_in_progress_not_current():
    state = object_state(JOB_RUNNING)
    assert (state.status, state.message) == ("in-progress", "running: 1 active, 0/1 succeeded, 0 failed")


def test_a_complete_job_is_current_and_a_failed_one_failed():
    assert (object_state(JOB_COMPLETE).status, object_state(JOB_COMPLETE).message) == (
        "current",
        "complete: 1/1 succeeded",
    )
    failed = object_state(JOB_FAILED)
    assert failed.status == "failed"
    assert failed.message == "failed (4 pods failed): BackoffLimitExceeded: Job has reached the specified backoff limit"


def test_a_job_not_started_or_suspended_is_in_progress():
    assert object_state({**JOB_RUNNING, "status": {}}).message == "not started yet"
    suspended = {"conditions": [{"type": "Suspended", "status": "True", "reason": "JobSuspended"}]}
    assert object_state({**JOB_RUNNING, "status": suspended}).status == "in-progress"


# PersistentVolumeClaims: the WaitForFirstConsumer trap.


def test_a_bound_claim_is_current_and_a_lost_one_failed():
    state = object_state(PVC_BOUND)
    assert (state.status, state.message) == ("current", "bound to pvc-3f6e2a1c-9b7d-4e55-a1c2-7d0e9f8b6a41 (100Gi)")
    lost = _with(PVC_BOUND, "status.phase", "Lost")
    assert object_state(lost).status == "failed"


def test_a_pending_claim_on_an_immediate_class_waits_for_provisioning():
    assert object_state(PVC_PENDING).status == "in-progress"
    assert object_state(PVC_PENDING, pods_scheduled=True).status == "in-progress"


def test_a_wait_for_first_consumer_claim_waits_for_its_pod_not_for_bound():
    waiting = object_state(PVC_PENDING, wait_for_first_consumer=True)
    assert (waiting.status, waiting.message) == (
        "in-progress",
        "waiting for a pod to be scheduled (WaitForFirstConsumer)",
    )
    assert object_state(PVC_PENDING, wait_for_first_consumer=True, pods_scheduled=True).status == "current"
    # The scheduler's selected-node annotation says the same thing from the claim itself.
    selected = _with(PVC_PENDING, "metadata.annotations", {"volume.kubernetes.io/selected-node": "gke-l4-7xkq"})
    assert object_state(selected, wait_for_first_consumer=True).status == "current"


# Pods, Services, and the rest.


def test_pod_states():
    assert (object_state(POD_READY).status, object_state(POD_READY).message) == ("current", "running and ready")
    not_ready = _with(POD_READY, "status.conditions", [{"type": "Ready", "status": "False"}])
    not_ready["status"]["containerStatuses"][0]["ready"] = False
    assert object_state(not_ready).message == "running, 0/1 containers ready"
    assert object_state(_with(POD_READY, "status", {"phase": "Succeeded"})).status == "current"
    evicted = {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: ephemeral-storage."}
    state = object_state(_with(POD_READY, "status", evicted))
    assert (state.status, state.message) == ("failed", "failed: The node was low on resource: ephemeral-storage.")
    assert object_state(_with(POD_READY, "status", {})).status == "in-progress"


def test_a_crash_looping_pod_is_failed():
    state = object_state(CRASHLOOP_OOM)
    assert (state.status, state.message) == ("failed", "crash-looping: vllm")


def test_an_unschedulable_pod_is_in_progress_for_pod_problem_to_judge():
    state = object_state(UNSCHEDULABLE)
    assert state.status == "in-progress" and state.message.startswith("unschedulable: 0/4 nodes are available")


def test_services():
    assert (object_state(SERVICE).status, object_state(SERVICE).message) == ("current", "ClusterIP 10.12.4.87")
    lb = _with(SERVICE, "spec.type", "LoadBalancer")
    # Deliberately unlike kstatus (a clusterIP is enough there): the endpoint is the LB address.
    assert (object_state(lb).status, object_state(lb).message) == (
        "in-progress",
        "waiting for the load balancer's address",
    )
    served = _with(lb, "status.loadBalancer", {"ingress": [{"ip": "34.118.20.7", "ipMode": "VIP"}]})
    assert (object_state(served).status, object_state(served).message) == ("current", "load balancer at 34.118.20.7")


def test_pod_disruption_budget():
    pdb = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "qwen-7b", "generation": 1},
        "spec": {"maxUnavailable": 1},
        "status": {"observedGeneration": 1, "currentHealthy": 2, "desiredHealthy": 1, "disruptionsAllowed": 1},
    }
    assert object_state(pdb).status == "current"
    assert object_state(_with(pdb, "metadata.generation", 2)).status == "in-progress"


def test_hpa_is_current_and_says_when_it_cannot_read_its_metric():
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "qwen-7b"},
        "spec": {"minReplicas": 1, "maxReplicas": 4},
        "status": {
            "currentReplicas": 1,
            "desiredReplicas": 1,
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "the HPA was unable to compute the replica count: unable to get metric "
                    "vllm:num_requests_waiting: no metrics returned from custom metrics API",
                },
            ],
        },
    }
    state = object_state(hpa)
    assert state.status == "current"
    assert state.message.startswith("1 replicas (min 1, max 4); not scaling: FailedGetPodsMetric:")


def test_custom_resources_read_their_ready_condition():
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "qwen-7b"}}
    assert (object_state(scaled).status, object_state(scaled).message) == ("current", "applied")
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "ScaledObjectReady",
        "message": "ScaledObject is defined correctly and is ready for scaling",
    }
    assert object_state(_with(scaled, "status.conditions", [ready])).status == "current"
    broken = {
        **ready,
        "status": "False",
        "reason": "ScaledObjectCheckFailed",
        "message": "ScaledObject doesn't have correct scaleTargetRef specification",
    }
    state = object_state(_with(scaled, "status.conditions", [broken]))
    assert state.status == "in-progress" and state.message.startswith("ScaledObjectCheckFailed: ScaledObject doesn't")


def test_a_gateway_is_ready_when_programmed():
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "fleet", "generation": 1},
    }
    pending = {"type": "Programmed", "status": "False", "reason": "Pending", "message": "Waiting for controller"}
    assert object_state(_with(gateway, "status.conditions", [pending])).status == "in-progress"
    done = {"type": "Programmed", "status": "True", "reason": "Programmed", "observedGeneration": 1}
    assert object_state(_with(gateway, "status.conditions", [done])).status == "current"


def test_objects_without_status_are_current_as_applied():
    for obj in (
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "qwen-7b-inventory"}, "data": {}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "vllm-fleet"}},
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "qwen-7b", "generation": 1},
        },
        {"apiVersion": "monitoring.googleapis.com/v1", "kind": "PodMonitoring", "metadata": {"name": "qwen-7b"}},
    ):
        assert (object_state(obj).status, object_state(obj).message) == ("current", "applied")


def test_a_crd_is_current_once_established():
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "x"}}
    established = [{"type": "NamesAccepted", "status": "True"}, {"type": "Established", "status": "True"}]
    assert object_state(_with(crd, "status.conditions", established)).status == "current"
    clash = [{"type": "NamesAccepted", "status": "False", "reason": "MultipleNamesNotAllowed", "message": "x"}]
    assert object_state(_with(crd, "status.conditions", clash)).status == "failed"


# --------------------------------------------------------------------------------------------
# pod_problem: containers


def _pod(status: Obj, *, containers: list[Obj] | None = None, init: list[Obj] | None = None) -> Obj:
    spec: Obj = {
        "nodeName": "gke-fleet-l4-pool-1a2b3c4d-7xkq",
        "containers": containers or [{"name": "vllm", "image": IMAGE}],
    }
    if init:
        spec["initContainers"] = init
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "qwen-7b-6d5f8b7c9d-x2x7q", "namespace": "default", "uid": "5b1c0a3e"},
        "spec": spec,
        "status": status,
    }


def _waiting(reason: str, message: str, **extra: Any) -> Obj:
    return {
        "phase": "Pending" if reason != "CrashLoopBackOff" else "Running",
        "containerStatuses": [
            {
                "name": "vllm",
                "image": IMAGE,
                "ready": False,
                "restartCount": extra.pop("restarts", 0),
                "state": {"waiting": {"reason": reason, "message": message}},
                **extra,
            }
        ],
    }


def _core_event(
    reason: str, message: str, *, seconds_ago: float = 5, container: str | None = "vllm", **extra: Any
) -> Obj:
    """A core v1 Event as the kubelet records it."""
    ref = {"kind": "Pod", "namespace": "default", "name": "qwen-7b-6d5f8b7c9d-x2x7q", "uid": "5b1c0a3e"}
    if container:
        ref["fieldPath"] = f"spec.containers{{{container}}}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "involvedObject": ref,
        "reason": reason,
        "message": message,
        "type": extra.pop("type", "Warning"),
        "source": {"component": extra.pop("component", "kubelet")},
        "firstTimestamp": _ago(extra.pop("first_ago", seconds_ago)),
        "lastTimestamp": _ago(seconds_ago),
        "count": extra.pop("count", 1),
    }


def _new_event(reason: str, note: str, *, seconds_ago: float, controller: str) -> Obj:
    """An events.k8s.io/v1 Event (regarding/note/eventTime/reportingController)."""
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "regarding": {"kind": "Pod", "namespace": "default", "name": "qwen-7b-6d5f8b7c9d-x2x7q", "uid": "5b1c0a3e"},
        "reason": reason,
        "note": note,
        "type": "Normal",
        "eventTime": (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "reportingController": controller,
        "reportingInstance": f"{controller}-1",
        "action": "ScaleUp",
    }


CRASHLOOP_OOM = _pod(
    _waiting(
        "CrashLoopBackOff",
        "back-off 40s restarting failed container=vllm pod=qwen-7b-6d5f8b7c9d-x2x7q_default(5b1c0a3e)",
        restarts=3,
        lastState={
            "terminated": {
                "exitCode": 137,
                "reason": "OOMKilled",
                "startedAt": _ago(100),
                "finishedAt": _ago(45),
            }
        },
    )
)

UNSCHEDULABLE_TEXT = (
    "0/4 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, "
    "3 Insufficient nvidia.com/gpu. preemption: 0/4 nodes are available: 1 Preemption is not helpful for "
    "scheduling, 3 No preemption victims found for incoming pod."
)


def _unschedulable(seconds_ago: float, message: str = UNSCHEDULABLE_TEXT) -> Obj:
    pod = _pod(
        {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": message,
                    "lastTransitionTime": _ago(seconds_ago),
                }
            ],
        }
    )
    del pod["spec"]["nodeName"]
    return pod


UNSCHEDULABLE = _unschedulable(300)


def test_a_crash_loop_from_oom_names_oomkilled_and_the_memory_knobs():
    problem = pod_problem(CRASHLOOP_OOM, [], now=NOW)
    assert problem is not None
    assert (problem.pod, problem.container, problem.reason, problem.retryable) == (
        "qwen-7b-6d5f8b7c9d-x2x7q",
        "vllm",
        "OOMKilled",
        False,
    )
    assert problem.message == "container vllm keeps crashing (3 restarts): last exit code 137 (OOMKilled, SIGKILL)"
    assert "resources.memory" in problem.fix and "engine.max_num_seqs" in problem.fix and "max_model_len" in problem.fix


def test_a_router_pods_crash_loop_names_the_routers_settings_not_the_engines():
    router = copy.deepcopy(CRASHLOOP_OOM)
    router["metadata"]["labels"] = {"app.kubernetes.io/name": "qwen-7b", "app.kubernetes.io/component": "router"}
    oom = pod_problem(router, [], now=NOW)
    assert oom is not None and oom.reason == "OOMKilled" and not oom.retryable
    assert "router.replicas" in oom.fix and "engine." not in oom.fix
    router["status"]["containerStatuses"][0]["lastState"]["terminated"].update(exitCode=1, reason="Error")
    crash = pod_problem(router, [], now=NOW)
    assert crash is not None and crash.reason == "CrashLoopBackOff"
    assert "router.* or kubernetes.*" in crash.fix and "engine.*" not in crash.fix


def test_a_crash_loop_quotes_the_containers_last_words_and_points_at_the_logs():
    words = (
        "INFO 06-03 09:58:12 [core.py:71] Initializing a V1 LLM engine\n"
        "ValueError: To serve at least one request with the models's max seq len (32768), (4.0 GiB KV cache "
        "is needed, which is larger than the available KV cache memory (2.1 GiB).\n"
    )
    status = _waiting(
        "CrashLoopBackOff",
        "back-off 20s restarting failed container=vllm pod=qwen-7b-6d5f8b7c9d-x2x7q_default(5b1c0a3e)",
        restarts=2,
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": words}},
    )
    problem = pod_problem(_pod(status), [], now=NOW)
    assert problem is not None and problem.reason == "CrashLoopBackOff" and not problem.retryable
    assert "last exit code 1 (Error): ValueError: To serve at least one request" in problem.message
    assert "kubectl logs qwen-7b-6d5f8b7c9d-x2x7q -n default -c vllm --previous" in problem.fix


def test_a_crash_loop_from_the_startup_probe_points_at_the_startup_budget():
    status = _waiting(
        "CrashLoopBackOff",
        "back-off 10s restarting failed container=vllm pod=qwen-7b-6d5f8b7c9d-x2x7q_default(5b1c0a3e)",
        restarts=1,
        lastState={"terminated": {"exitCode": 137, "reason": "Error"}},
    )
    events = [
        _core_event(
            "Unhealthy",
            'Startup probe failed: Get "http://10.8.1.23:8000/health": dial tcp 10.8.1.23:8000: connect: '
            "connection refused",
            seconds_ago=60,
            count=30,
        ),
        _core_event("Killing", "Container vllm failed startup probe, will be restarted", seconds_ago=30, type="Normal"),
    ]
    problem = pod_problem(_pod(status), events, now=NOW)
    assert problem is not None and not problem.retryable
    assert "failed startup probe" in problem.message and "kubernetes.startup_timeout_s" in problem.fix


def test_a_running_pod_that_restarted_once_and_is_ready_again_is_no_problem():
    pod = copy.deepcopy(POD_READY)
    pod["status"]["containerStatuses"][0]["restartCount"] = 1
    pod["status"]["containerStatuses"][0]["lastState"] = {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}
    assert (
        pod_problem(
            pod, [_core_event("BackOff", "Back-off restarting failed container vllm", seconds_ago=300)], now=NOW
        )
        is None
    )


def test_a_pod_still_pulling_is_no_problem():
    status = {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": _ago(400)}],
        "containerStatuses": [
            {
                "name": "vllm",
                "image": IMAGE,
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}},
            }
        ],
    }
    events = [
        _core_event(
            "Scheduled",
            "Successfully assigned default/qwen-7b-6d5f8b7c9d-x2x7q to gke-l4-7xkq",
            container=None,
            seconds_ago=400,
            component="default-scheduler",
            type="Normal",
        ),
        _core_event("Pulling", f'Pulling image "{IMAGE}"', seconds_ago=390, type="Normal"),
    ]
    assert pod_problem(_pod(status), events, now=NOW) is None


MISSING_TAG = "ghcr.io/vllm-fleet/vllm-fleet:0.1.0-vllm0.99"


@pytest.mark.parametrize(
    "reason, waiting_message, event_message",
    [
        pytest.param(
            "ErrImagePull",
            f'rpc error: code = NotFound desc = failed to pull and unpack image "{MISSING_TAG}": failed to resolve '
            f'reference "{MISSING_TAG}": {MISSING_TAG}: not found',
            None,
            id="containerd-not-found",
        ),
        pytest.param(
            "ImagePullBackOff",
            f'Back-off pulling image "{MISSING_TAG}"',
            f'Failed to pull image "{MISSING_TAG}": Error response from daemon: manifest unknown: manifest unknown',
            id="manifest-unknown-in-the-event",
        ),
        pytest.param(
            "ErrImagePull",
            "",
            'Failed to pull image "vllm-fleet/vllm-fleet:0.1.0": Error response from daemon: pull access denied for '
            "vllm-fleet/vllm-fleet, repository does not exist or may require 'docker login': denied: requested access "
            "to the resource is denied",
            id="docker-hub-repository-does-not-exist",
        ),
    ],
)
def test_an_image_that_does_not_exist_is_not_retryable(reason: str, waiting_message: str, event_message: str | None):
    events = [_core_event("Failed", event_message)] if event_message else []
    events.append(_core_event("Failed", f"Error: {reason}"))
    problem = pod_problem(_pod(_waiting(reason, waiting_message, image=MISSING_TAG)), events, now=NOW)
    assert problem is not None
    assert (problem.reason, problem.retryable) == (reason, False)
    assert problem.message.startswith(f"cannot pull {MISSING_TAG}: ")
    assert "Error: " not in problem.message  # the detail, not the kubelet's restatement of the reason
    assert problem.fix.startswith("kubernetes.image")


@pytest.mark.parametrize(
    "event_message",
    [
        pytest.param(
            'Failed to pull image "docker.io/vllm/vllm-openai:v0.11.0": failed to pull and unpack image '
            '"docker.io/vllm/vllm-openai:v0.11.0": failed to copy: httpReadSeeker: failed open: unexpected status '
            "code https://registry-1.docker.io/v2/vllm/vllm-openai/manifests/sha256:9f1c: 429 Too Many Requests - "
            "Server message: toomanyrequests: You have reached your pull rate limit.",
            id="rate-limited",
        ),
        pytest.param(
            f'Failed to pull image "{IMAGE}": rpc error: code = Unknown desc = failed to pull and unpack image '
            f'"{IMAGE}": failed to copy: read tcp 10.128.0.5:41234->140.82.112.34:443: read: connection reset by peer',
            id="connection-reset",
        ),
        pytest.param(
            f'Failed to pull image "{IMAGE}": rpc error: code = DeadlineExceeded desc = failed to pull and unpack '
            f'image "{IMAGE}": failed to resolve reference "{IMAGE}": failed to do request: Head '
            '"https://ghcr.io/v2/vllm-fleet/vllm-fleet/manifests/0.1.0-vllm0.11.0": dial tcp: i/o timeout',
            id="timeout",
        ),
        pytest.param(
            f'Failed to pull image "{IMAGE}": unexpected status from HEAD request: 503 Service Unavailable',
            id="registry-5xx",
        ),
    ],
)
def test_a_transient_pull_error_is_retryable(event_message: str):
    problem = pod_problem(_pod(_waiting("ErrImagePull", "")), [_core_event("Failed", event_message)], now=NOW)
    assert problem is not None and problem.retryable and problem.reason == "ErrImagePull"


def test_an_invalid_image_name_is_not_retryable():
    bad = "ghcr.io/vllm-fleet/vllm-fleet:0.1.0:extra"
    message = f'Failed to apply default image tag "{bad}": couldn\'t parse image name "{bad}": invalid reference format'
    problem = pod_problem(_pod(_waiting("InvalidImageName", message, image=bad)), [], now=NOW)
    assert problem is not None and (problem.reason, problem.retryable) == ("InvalidImageName", False)
    assert problem.fix.startswith("kubernetes.image")


HF_ENV = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}]


def test_a_missing_secret_names_it_and_the_spec_key():
    pod = _pod(
        _waiting("CreateContainerConfigError", 'secret "hf-token" not found'),
        containers=[{"name": "vllm", "image": IMAGE, "env": HF_ENV}],
    )
    problem = pod_problem(pod, [_core_event("Failed", 'Error: secret "hf-token" not found')], now=NOW)
    assert problem is not None
    assert (problem.reason, problem.retryable, problem.message) == (
        "CreateContainerConfigError",
        False,
        'secret "hf-token" not found',
    )
    assert "kubectl create secret generic hf-token -n default --from-literal=HF_TOKEN=..." in problem.fix
    assert "kubernetes.secrets.hf_token" in problem.fix


def test_a_missing_secret_key_names_the_key():
    pod = _pod(
        _waiting("CreateContainerConfigError", "couldn't find key HF_TOKEN in Secret default/hf-token"),
        containers=[{"name": "vllm", "image": IMAGE, "env": HF_ENV}],
    )
    problem = pod_problem(pod, [], now=NOW)
    assert problem is not None and not problem.retryable
    assert (
        problem.fix.startswith("add key HF_TOKEN to Secret default/hf-token")
        and "kubernetes.secrets.hf_token" in problem.fix
    )


def test_an_s3_secret_maps_to_its_spec_key():
    env = [
        {"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "spaces", "key": "AWS_ACCESS_KEY_ID"}}},
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": "spaces", "key": "AWS_SECRET_ACCESS_KEY"}},
        },
    ]
    init = [{"name": "stage", "image": IMAGE, "env": env}]
    status = {
        "phase": "Pending",
        "initContainerStatuses": [
            {
                "name": "stage",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "spaces" not found'}},
            }
        ],
        "containerStatuses": [
            {"name": "vllm", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "PodInitializing"}}}
        ],
    }
    problem = pod_problem(_pod(status, init=init), [], now=NOW)
    assert problem is not None and problem.container == "stage"
    assert "--from-literal=AWS_ACCESS_KEY_ID=... --from-literal=AWS_SECRET_ACCESS_KEY=..." in problem.fix
    assert "kubernetes.secrets.s3" in problem.fix


def test_a_secret_volume_that_cannot_mount_is_not_retryable():
    status = {
        "phase": "Pending",
        "containerStatuses": [
            {"name": "vllm", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}}}
        ],
    }
    event = _core_event(
        "FailedMount",
        'MountVolume.SetUp failed for volume "gcs-key" : secret "gcs-key" not found',
        container=None,
        count=4,
    )
    problem = pod_problem(_pod(status), [event], now=NOW)
    assert problem is not None and (problem.reason, problem.retryable) == ("FailedMount", False)
    assert "Secret gcs-key" in problem.fix


def test_an_old_mount_failure_on_a_running_pod_is_history():
    event = _core_event(
        "FailedMount", 'MountVolume.SetUp failed for volume "hf-token" : secret "hf-token" not found', container=None
    )
    assert pod_problem(POD_READY, [event], now=NOW) is None


def test_a_multi_attach_error_fails_after_the_grace():
    status = {
        "phase": "Pending",
        "containerStatuses": [{"name": "vllm", "state": {"waiting": {"reason": "ContainerCreating"}}}],
    }
    text = (
        'Multi-Attach error for volume "pvc-3f6e2a1c-9b7d-4e55-a1c2-7d0e9f8b6a41" Volume is already used by pod(s) '
        "qwen-7b-6d5f8b7c9d-a1b2c"
    )
    early = _core_event("FailedAttachVolume", text, container=None, seconds_ago=5, first_ago=20)
    assert pod_problem(_pod(status), [early], now=NOW) is None
    late = _core_event("FailedAttachVolume", text, container=None, seconds_ago=5, first_ago=120)
    problem = pod_problem(_pod(status), [late], now=NOW)
    assert problem is not None and not problem.retryable and "storage.access_mode" in problem.fix


def test_a_missing_command_in_the_image_is_not_retryable():
    message = (
        "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: "
        'unable to start container process: exec: "vllm-fleet": executable file not found in $PATH: unknown'
    )
    problem = pod_problem(_pod(_waiting("RunContainerError", message)), [], now=NOW)
    assert problem is not None and not problem.retryable and problem.fix.startswith("kubernetes.image")


def test_terminating_and_succeeded_pods_are_no_problem():
    assert pod_problem(_with(CRASHLOOP_OOM, "metadata.deletionTimestamp", _ago(3)), [], now=NOW) is None
    assert pod_problem(_with(POD_READY, "status", {"phase": "Succeeded"}), [], now=NOW) is None


def test_a_failed_pod_is_retryable_unless_it_ran_out_of_memory():
    evicted = _with(
        POD_READY,
        "status",
        {"phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory."},
    )
    problem = pod_problem(evicted, [], now=NOW)
    assert problem is not None and (problem.reason, problem.retryable) == ("Evicted", True)
    oom = {
        "phase": "Failed",
        "containerStatuses": [{"name": "stage", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}],
    }
    problem = pod_problem(_with(POD_READY, "status", oom), [], now=NOW)
    assert problem is not None and (problem.reason, problem.retryable) == ("OOMKilled", False)


# pod_problem: scheduling


def _autoscaler(reason: str, message: str, seconds_ago: float = 30, **extra: Any) -> Obj:
    return _core_event(
        reason, message, container=None, seconds_ago=seconds_ago, component="cluster-autoscaler", **extra
    )


def test_an_unschedulable_pod_within_its_grace_is_no_problem():
    assert pod_problem(_unschedulable(20), [], now=NOW) is None
    assert pod_problem(_unschedulable(20), [], now=NOW, unschedulable_grace_s=10) is not None


def test_an_unschedulable_pod_with_no_scale_up_is_not_retryable():
    problem = pod_problem(UNSCHEDULABLE, [], now=NOW)
    assert problem is not None
    assert (problem.container, problem.reason, problem.retryable) == (None, "Unschedulable", False)
    assert problem.message.startswith("unschedulable for 300s: 0/4 nodes are available:")
    # The GPU shortage is the cause, not the control-plane taint in the same text.
    assert "resources.gpus" in problem.fix and problem.fix.startswith("no autoscaler is adding a node")


def test_a_scale_up_in_progress_is_retryable():
    event = _autoscaler(
        "TriggeredScaleUp",
        "pod triggered scale-up: [{https://www.googleapis.com/compute/v1/projects/acme-ml/zones/us-central1-a/"
        "instanceGroups/gke-fleet-l4-pool-1a2b3c4d-grp 0->1 (max: 4)}]",
        type="Normal",
    )
    problem = pod_problem(UNSCHEDULABLE, [event], now=NOW)
    assert problem is not None and problem.retryable
    assert "TriggeredScaleUp: pod triggered scale-up" in problem.message


def test_the_new_event_api_and_karpenter_are_read_too():
    new = _new_event(
        "TriggeredScaleUp",
        "pod triggered scale-up: [{eks-gpu-l4 0->1 (max: 3)}]",
        seconds_ago=30,
        controller="cluster-autoscaler",
    )
    problem = pod_problem(UNSCHEDULABLE, [new], now=NOW)
    assert problem is not None and problem.retryable
    nominated = _new_event(
        "Nominated", "Pod should schedule on: nodeclaim/gpu-l4-x7k2q", seconds_ago=30, controller="karpenter"
    )
    problem = pod_problem(UNSCHEDULABLE, [nominated], now=NOW)
    assert problem is not None and problem.retryable


@pytest.mark.parametrize(
    "message",
    [
        "Node scale up in zones us-central1-a associated with this pod failed: GCE out of resources. Pod is at risk "
        "of not being scheduled.",
        "Node scale up in zones us-central1-b associated with this pod failed: ZONE_RESOURCE_POOL_EXHAUSTED: The zone "
        "'projects/acme-ml/zones/us-central1-b' does not have enough resources available to fulfill the request.",
        "Failed to scale up: Could not launch On-Demand Instances. InsufficientInstanceCapacity - We currently do not "
        "have sufficient g6.xlarge capacity in the Availability Zone you requested (us-east-1a).",
        "Node scale up in zones us-central1-a associated with this pod failed: Specific reservation "
        "'l4-reservation' for the instance is exceeded.",
    ],
)
def test_a_stockout_is_retryable(message: str):
    problem = pod_problem(UNSCHEDULABLE, [_autoscaler("FailedScaleUp", message)], now=NOW)
    assert problem is not None and problem.retryable
    assert "no capacity" in problem.fix


def test_an_autoscaler_backing_off_after_a_failed_scale_up_is_retryable():
    event = _autoscaler(
        "NotTriggerScaleUp",
        "pod didn't trigger scale-up: 1 in backoff after failed scale-up, 2 node(s) didn't match Pod's node "
        "affinity/selector",
        type="Normal",
    )
    problem = pod_problem(UNSCHEDULABLE, [event], now=NOW)
    assert problem is not None and problem.retryable


@pytest.mark.parametrize(
    "reason, message, fix_words",
    [
        pytest.param(
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up: 1 max node group size reached",
            "maximum size",
            id="max-node-group-size",
        ),
        pytest.param(
            "NotTriggerScaleUp",
            "pod didn't trigger scale-up (it wouldn't fit if a new node is added): 3 node(s) didn't match Pod's node "
            "affinity/selector",
            "kubernetes.gpu_node_selector",
            id="no-matching-node-pool",
        ),
        pytest.param(
            "FailedScaleUp",
            "Node scale up in zones us-central1-a associated with this pod failed: GCE quota exceeded. Pod is at risk "
            "of not being scheduled.",
            "quota",
            id="gce-quota",
        ),
        pytest.param(
            "FailedScaleUp",
            "Failed to scale up: QUOTA_EXCEEDED: Quota 'NVIDIA_L4_GPUS' exceeded. Limit: 0.0 in region us-central1.",
            "quota",
            id="gpu-family-quota",
        ),
    ],
)
def test_a_scale_up_that_cannot_happen_is_not_retryable(reason: str, message: str, fix_words: str):
    problem = pod_problem(UNSCHEDULABLE, [_autoscaler(reason, message)], now=NOW)
    assert problem is not None and not problem.retryable
    assert fix_words in problem.fix


def test_the_latest_autoscaler_event_decides():
    triggered = _autoscaler(
        "TriggeredScaleUp", "pod triggered scale-up: [{gke-fleet-l4-grp 0->1 (max: 4)}]", seconds_ago=200
    )
    quota = _autoscaler(
        "FailedScaleUp",
        "Node scale up in zones us-central1-a associated with this pod failed: GCE quota exceeded.",
        seconds_ago=60,
    )
    problem = pod_problem(UNSCHEDULABLE, [quota, triggered], now=NOW)  # given out of order on purpose
    assert problem is not None and not problem.retryable


@pytest.mark.parametrize(
    "scheduler, fix_words",
    [
        pytest.param(
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector. preemption: 0/3 nodes are "
            "available: 3 Preemption is not helpful for scheduling.",
            "resources.gpu_type",
            id="selector",
        ),
        pytest.param(
            "0/3 nodes are available: 3 node(s) didn't match node selector.",
            "resources.gpu_type",
            id="selector-old-text",
        ),
        pytest.param(
            "0/2 nodes are available: 2 node(s) had untolerated taint {nvidia.com/gpu: present}. preemption: 0/2 nodes "
            "are available: 2 Preemption is not helpful for scheduling.",
            "taint",
            id="taint",
        ),
        pytest.param(
            'persistentvolumeclaim "qwen-7b-weights" not found',
            "PersistentVolumeClaim qwen-7b-weights does not exist",
            id="missing-pvc",
        ),
        pytest.param(
            '0/3 nodes are available: storageclass.storage.k8s.io "fast-ssd" not found. preemption: 0/3 nodes are '
            "available: 3 Preemption is not helpful for scheduling.",
            "StorageClass fast-ssd does not exist",
            id="missing-storageclass",
        ),
    ],
)
def test_scheduler_reasons_no_wait_fixes(scheduler: str, fix_words: str):
    problem = pod_problem(_unschedulable(120, scheduler), [], now=NOW)
    assert problem is not None and not problem.retryable
    assert fix_words in problem.fix


def test_a_missing_claim_is_not_retryable_even_while_a_scale_up_runs():
    pod = _unschedulable(120, 'persistentvolumeclaim "qwen-7b-weights" not found')
    event = _autoscaler("TriggeredScaleUp", "pod triggered scale-up: [{gke-fleet-l4-grp 0->1 (max: 4)}]")
    problem = pod_problem(pod, [event], now=NOW)
    assert problem is not None and not problem.retryable


def test_the_newest_failed_scheduling_event_is_the_message_and_other_pods_events_are_ignored():
    newer = _core_event(
        "FailedScheduling",
        "0/5 nodes are available: 5 Insufficient nvidia.com/gpu.",
        container=None,
        seconds_ago=10,
        component="default-scheduler",
    )
    other = _autoscaler("TriggeredScaleUp", "pod triggered scale-up: [{gke-fleet-l4-grp 0->1 (max: 4)}]")
    other["involvedObject"]["name"] = "qwen-7b-6d5f8b7c9d-zzzzz"
    problem = pod_problem(UNSCHEDULABLE, [other, newer], now=NOW)
    assert problem is not None and not problem.retryable
    assert problem.message == "unschedulable for 300s: 0/5 nodes are available: 5 Insufficient nvidia.com/gpu."


# --------------------------------------------------------------------------------------------
# gpu_free and node_fits


def _node(name: str, gpus: str | None, labels: Obj | None = None, taints: list[Obj] | None = None, **spec: Any) -> Obj:
    allocatable = {"cpu": "7910m", "memory": "27Gi", "pods": "110"}
    if gpus is not None:
        allocatable["nvidia.com/gpu"] = gpus
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {**({"taints": taints} if taints else {}), **spec},
        "status": {"allocatable": allocatable},
    }


def _gpu_pod(
    name: str,
    node: str | None,
    containers: list[int],
    init: tuple[tuple[int, bool], ...] = (),
    phase: str = "Running",
    **spec: Any,
) -> Obj:
    """A pod whose app containers request ``containers`` GPUs and whose init containers ``(gpus, sidecar)``."""

    def container(i: int, gpus: int, prefix: str) -> Obj:
        return {"name": f"{prefix}{i}", "resources": {"requests": {"cpu": "1", "nvidia.com/gpu": str(gpus)}}}

    pod_spec: Obj = {"containers": [container(i, g, "c") for i, g in enumerate(containers)], **spec}
    if init:
        pod_spec["initContainers"] = [
            {**container(i, g, "i"), **({"restartPolicy": "Always"} if sidecar else {})}
            for i, (g, sidecar) in enumerate(init)
        ]
    if node:
        pod_spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": pod_spec, "status": {"phase": phase}}


def test_gpu_free_subtracts_the_requests_of_pods_bound_to_each_node():
    nodes = [_node("a3-highgpu-8g-1", "8"), _node("g2-standard-4-1", "1"), _node("e2-standard-8-1", None)]
    pods = [
        _gpu_pod("two", "a3-highgpu-8g-1", [2]),
        _gpu_pod("one-plus-one", "a3-highgpu-8g-1", [1, 1]),
        _gpu_pod("done", "a3-highgpu-8g-1", [4], phase="Succeeded"),
        _gpu_pod("crashed", "a3-highgpu-8g-1", [4], phase="Failed"),
        _gpu_pod("pending", None, [8], phase="Pending"),
        _gpu_pod("elsewhere", "not-in-the-list", [1]),
    ]
    assert gpu_free(nodes, pods) == {"a3-highgpu-8g-1": 4, "g2-standard-4-1": 1, "e2-standard-8-1": 0}


def test_a_pod_request_is_the_larger_of_its_init_and_app_containers():
    nodes = [_node("n", "8")]
    # A one-shot init container asking 4 GPUs reserves 4 even though the app asks 1 (PodRequests).
    assert gpu_free(nodes, [_gpu_pod("p", "n", [1], init=[(4, False)])]) == {"n": 4}
    # A native sidecar adds to the app containers, and to every later init container.
    assert gpu_free(nodes, [_gpu_pod("p", "n", [1], init=[(1, True), (2, False)])]) == {"n": 5}
    assert gpu_free(nodes, [_gpu_pod("p", "n", [1], init=[(1, True)])]) == {"n": 6}


def test_limits_stand_in_for_missing_requests_and_the_overhead_counts():
    pod = {
        "metadata": {"name": "limits-only"},
        "spec": {
            "nodeName": "n",
            "containers": [{"name": "vllm", "resources": {"limits": {"nvidia.com/gpu": 2}}}],
            "overhead": {"nvidia.com/gpu": "1"},
        },
        "status": {"phase": "Running"},
    }
    assert gpu_free([_node("n", "4")], [pod]) == {"n": 1}


def test_gpu_free_works_for_another_extended_resource():
    node = _node("tpu-1", None)
    node["status"]["allocatable"]["google.com/tpu"] = "4"
    pod = {
        "spec": {"nodeName": "tpu-1", "containers": [{"resources": {"requests": {"google.com/tpu": "4"}}}]},
        "status": {},
    }
    assert gpu_free([node], [pod], "google.com/tpu") == {"tpu-1": 0}


L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4", "kubernetes.io/arch": "amd64"}
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def test_node_fits_needs_every_label_and_a_toleration_for_every_hard_taint():
    node = _node("gke-l4-1", "1", labels=L4, taints=[GPU_TAINT])
    selector = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert node_fits(node, selector, [GPU_TOLERATION])
    assert not node_fits(node, selector, [])
    assert not node_fits(node, {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}, [GPU_TOLERATION])
    assert node_fits(node, {}, [GPU_TOLERATION])


def test_toleration_operators_and_effects():
    node = _node("n", "1", taints=[GPU_TAINT, {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}])
    assert node_fits(node, {}, [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}])
    assert node_fits(
        node, {}, [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    )  # Equal by default
    assert not node_fits(node, {}, [{"key": "nvidia.com/gpu", "operator": "Equal", "value": "absent"}])
    assert not node_fits(node, {}, [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}])
    assert node_fits(node, {}, [{"operator": "Exists"}])  # an empty key with Exists tolerates every taint
    evicting = _node("n", "1", taints=[{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}])
    assert not node_fits(evicting, {}, [GPU_TOLERATION])


def test_a_cordoned_node_does_not_fit():
    node = _node("gke-l4-1", "1", labels=L4, taints=[GPU_TAINT], unschedulable=True)
    assert not node_fits(node, {"cloud.google.com/gke-accelerator": "nvidia-l4"}, [GPU_TOLERATION])
    # ... unless the pod tolerates the cordon itself, as DaemonSet pods do (NodeUnschedulable plugin).
    cordon = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
    assert node_fits(node, {}, [GPU_TOLERATION, cordon])


@pytest.mark.parametrize(
    ("message", "reason", "fix_words"),
    [
        (
            'MountVolume.MountDevice failed for volume "gcs-fuse-csi-ephemeral" : kubernetes.io/csi: '
            "attacher.MountDevice failed to create newCsiDriverClient: driver name gcsfuse.csi.storage.gke.io "
            "not found in the list of "
            "registered CSI drivers",
            "GcsFuseDriverMissing",
            "GcsFuseCsiDriver=ENABLED",
        ),
        (
            'MountVolume.SetUp failed for volume "weights" : rpc error: code = FailedPrecondition desc = failed to '
            "find the sidecar container in Pod spec",
            "GcsFuseSidecarMissing",
            "gke-gcsfuse/volumes",
        ),
        (
            'MountVolume.SetUp failed for volume "weights" : rpc error: code = PermissionDenied desc = failed to get '
            'GCS bucket "my-models": googleapi: Error 403: Caller does not have storage.objects.list access '
            "(gcsfuse)",
            "GcsFuseForbidden",
            "kubernetes.gcp_service_account",
        ),
        (
            'MountVolume.SetUp failed for volume "weights" : rpc error: code = NotFound desc = gcsfuse failed: bucket '
            "does not exist",
            "GcsFuseBucketNotFound",
            "model.source",
        ),
        (
            'MountVolume.SetUp failed for volume "cache" : mount failed: exit status 32 Mounting command: mount '
            "Output: mount.nfs: access denied by server while mounting 10.0.0.2:/models",
            "NfsMountFailed",
            "storage.nfs_server",
        ),
    ],
)
def test_storage_mount_failures_that_waiting_does_not_fix(message: str, reason: str, fix_words: str) -> None:
    """GCS FUSE (driver, sidecar, permission, bucket) and NFS refusals fail at once, with their fix."""
    status = {
        "phase": "Pending",
        "containerStatuses": [{"name": "vllm", "state": {"waiting": {"reason": "ContainerCreating"}}}],
    }
    event = _core_event("FailedMount", message, container=None, seconds_ago=2, first_ago=3)
    problem = pod_problem(_pod(status), [event], now=NOW)
    assert problem is not None and (problem.reason, problem.retryable) == (reason, False)
    assert fix_words in problem.fix
