"""doctor's own rules on recorded objects: what only the Deployment or the probe events show."""

from __future__ import annotations

from datetime import UTC, datetime

from vllm_fleet.targets.kubernetes.cluster.doctor import Dump, diagnose

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def test_a_resource_quota_that_refuses_the_pods_is_named_from_the_deployment() -> None:
    message = (
        'pods "qwen-6d5f8b7c9d-x2kfp" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1, '
        "used: requests.nvidia.com/gpu=4, limited: requests.nvidia.com/gpu=4"
    )  # the ReplicaSet controller's FailedCreate text (pkg/controller/replicaset), copied to the Deployment
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "qwen", "namespace": "llm", "generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "conditions": [
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": message}]},
    }  # fmt: skip
    [found] = diagnose(Dump(deployments=[deployment]), now=NOW)
    assert found.cause.startswith("ResourceQuota exceeded: ") and "ResourceQuota" in found.fix
    assert found.primary and not found.retryable and found.subject == "deployment/qwen"


def test_readiness_failing_after_a_start_is_named_with_the_probe_text() -> None:
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "qwen-abc", "namespace": "llm", "uid": "u1"},
        "spec": {"containers": [{"name": "vllm", "image": "i"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                   "containerStatuses": [{"name": "vllm", "ready": False, "restartCount": 0,
                                          "state": {"running": {"startedAt": "2026-12-01T11:40:00Z"}}}]},
    }  # fmt: skip
    event = {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "e", "namespace": "llm"},
        "involvedObject": {"kind": "Pod", "name": "qwen-abc", "uid": "u1"}, "reason": "Unhealthy", "type": "Warning",
        "message": 'Readiness probe failed: Get "http://10.0.0.5:8000/health": context deadline exceeded', "count": 31,
    }  # fmt: skip
    [found] = diagnose(Dump(pods=[pod], events=[event]), now=NOW)
    assert "does not become ready" in found.cause and "Readiness probe failed" in found.cause
    assert "x31" in found.evidence
    assert diagnose(Dump(pods=[pod]), now=NOW) == []  # no failing probe seen: nothing to say
