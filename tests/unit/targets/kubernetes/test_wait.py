"""The wait's judgement on recorded objects: ready, doomed, or waiting for capacity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from vllm_fleet.plan import resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.cluster.wait import Seen, judge, pod_labels, pod_phase, pod_role
from vllm_fleet.targets.kubernetes.manifests.render import render

SPEC = """\
name: m
model: {source: "gs://b/m", served_name: m, size_gb: 1}
target: kubernetes
resources: {gpus: 1, gpu_type: nvidia-l4}
kubernetes: {platform: gke, namespace: llm}
storage: {profile: pvc-init, storage_class: standard-rwo}
"""
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _plan():
    return resolve(parse_spec(SPEC))


def _deployment(ready: int, name: str = "m", replicas: int = 1) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": "llm", "generation": 1},
        "spec": {"replicas": replicas},
        "status": {
            "observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [{"type": "Available", "status": "True" if ready else "False"}],
        },
    }  # fmt: skip


def _claim() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "m-cache", "namespace": "llm"},
        "status": {"phase": "Bound"},
    }


def _pod(**status: object) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "m-abc", "namespace": "llm", "uid": "u1", "creationTimestamp": "2026-12-01T11:50:00Z"},
        "spec": {"nodeName": status.pop("node", "gpu-1"), "containers": [{"name": "vllm", "image": "i"}]},
        "status": status,
    }


def _seen(*objects: dict, events: tuple[dict, ...] = ()) -> Seen:
    seen = Seen()
    for obj in objects:
        seen.put(obj["kind"], "ADDED", obj)
    for event in events:
        seen.put("Event", "ADDED", event)
    return seen


READY_POD = {
    "phase": "Running",
    "conditions": [{"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
    "containerStatuses": [{"name": "vllm", "ready": True, "restartCount": 0, "state": {"running": {}}}],
}


def _router(ready: int = 2) -> dict:
    return _deployment(ready, "m-router", replicas=2)


def test_everything_current_is_done() -> None:
    plan = _plan()
    verdict = judge(plan, render(plan), _seen(_deployment(1), _router(), _claim(), _pod(**READY_POD)), now=NOW)
    assert verdict.done and verdict.failure is None and verdict.summary == "ready"


def test_the_router_not_seen_or_not_ready_keeps_it_waiting() -> None:
    plan = _plan()
    verdict = judge(plan, render(plan), _seen(_deployment(1), _claim(), _pod(**READY_POD)), now=NOW)
    assert not verdict.done and "Deployment/m-router: not seen yet" in verdict.summary
    verdict = judge(plan, render(plan), _seen(_deployment(1), _router(0), _claim(), _pod(**READY_POD)), now=NOW)
    assert not verdict.done and "Deployment/m-router" in verdict.summary


def test_an_object_not_seen_yet_keeps_it_waiting() -> None:
    plan = _plan()
    verdict = judge(plan, render(plan), _seen(_deployment(1), _pod(**READY_POD)), now=NOW)
    assert not verdict.done and "PersistentVolumeClaim" in verdict.summary and "not seen yet" in verdict.summary


def test_a_crash_loop_fails_at_once_with_its_exit_code() -> None:
    plan = _plan()
    crashing = _pod(
        phase="Running",
        conditions=[{"type": "Ready", "status": "False"}],
        containerStatuses=[{
            "name": "vllm", "ready": False, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }],
    )  # fmt: skip
    verdict = judge(plan, render(plan), _seen(_deployment(0), _claim(), crashing), now=NOW)
    assert not verdict.done and verdict.failure is not None
    assert verdict.failure.reason == "CrashLoopBackOff" and "exit code 1" in verdict.failure.message


def test_unschedulable_during_a_scale_up_waits_for_capacity() -> None:
    plan = _plan()
    since = (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    pending = _pod(
        node=None,
        phase="Pending",
        conditions=[{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastTransitionTime": since,
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        }],
    )  # fmt: skip
    scale_up = {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": "e1", "namespace": "llm"},
        "involvedObject": {"kind": "Pod", "name": "m-abc", "namespace": "llm", "uid": "u1"},
        "reason": "TriggeredScaleUp",
        "message": "pod triggered scale-up: [{gpu-pool 1->2 (max: 4)}]",
        "source": {"component": "cluster-autoscaler"},
        "lastTimestamp": since,
    }
    verdict = judge(plan, render(plan), _seen(_deployment(0), _claim(), pending, events=(scale_up,)), now=NOW)
    assert not verdict.done and verdict.failure is None
    assert verdict.waiting_for_capacity is not None and verdict.waiting_for_capacity.retryable


def test_pod_phase_names_what_the_pod_is_doing() -> None:
    assert pod_phase(_pod(node=None, phase="Pending")) == "waiting for a node"
    staging = _pod(phase="Pending", initContainerStatuses=[{"name": "stage", "ready": False, "state": {"running": {}}}])
    assert pod_phase(staging) == "staging weights"
    loading = _pod(phase="Running", containerStatuses=[{"name": "vllm", "ready": False, "state": {"running": {}}}])
    assert pod_phase(loading) == "loading the model"
    assert pod_phase(_pod(**READY_POD)) == "ready"


def test_the_wait_and_status_select_the_router_pods_too_unless_there_is_no_router():
    from lightkube.core.selector import build_selector

    assert build_selector(pod_labels(_plan())) == (
        "app.kubernetes.io/name=m,app.kubernetes.io/component in (engine,router)"
    )
    without = resolve(parse_spec(SPEC + "router: {enabled: false}\n"))
    assert build_selector(pod_labels(without)) == "app.kubernetes.io/name=m,app.kubernetes.io/component=engine"
    router = _pod()
    router["metadata"]["labels"] = {"app.kubernetes.io/name": "m", "app.kubernetes.io/component": "router"}
    assert (pod_role(router), pod_role(_pod())) == ("router", "engine")
