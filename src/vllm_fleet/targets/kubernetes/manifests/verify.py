"""The in-cluster latency Job: `vllm-fleet verify` run beside the pods, so the SLO is measured where clients are.

A port-forward from the operator's machine adds latency the real clients never pay; this Job sends the
spec's latency check to the Service from inside the namespace and prints its JSON result, which `up`
reads from the Job's log.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta, pod_security, tool_container

COMPONENT = "verify"
CONTAINER = "verify"
DEADLINE_S = 600


def service_url(plan: Plan) -> str:
    """The Service's address inside the cluster."""
    k8s = plan.spec.kubernetes
    return f"http://{plan.name}.{k8s.namespace}.svc:{k8s.port}"


def latency_job(plan: Plan, name: str) -> Obj:
    """A Job that runs the spec's verify (and its latency check) against the Service once, then goes away."""
    slo = plan.spec.slo
    command = ["vllm-fleet", "verify", service_url(plan), "--json", "--model", plan.served_name,
               "--requests", str(slo.requests), "--slo", str(slo.p95_latency_s)]  # fmt: skip
    container = tool_container(plan, CONTAINER, command, [])
    labels = meta(plan, name, COMPONENT)["labels"]
    pod = {
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",
        "securityContext": pod_security(plan),
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(plan, name, COMPONENT),
        "spec": {
            "backoffLimit": 0,  # one measurement; a failed one is a result, not something to retry
            "activeDeadlineSeconds": DEADLINE_S,
            "ttlSecondsAfterFinished": 600,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
