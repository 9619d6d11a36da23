"""A batch as a Kubernetes Job: `vllm-fleet batch` against the Service, its input and output on a claim.

The output file lives on the claim, so the Job resumes as the command does: a pod that is
killed or evicted is replaced (``backoffLimit``), and the new one skips every ``custom_id``
already written. The claim must be mountable by the Job's pod (ReadWriteMany — the nfs
profile's share — or a ReadWriteOnce claim on the same node).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta, pod_security, tool_container
from vllm_fleet.targets.kubernetes.manifests.verify import service_url

COMPONENT = "batch"
MOUNT = "/batch"
RETRIES = 6  # pods the Job may replace; each resumes where the last stopped


@dataclass(frozen=True)
class BatchJob:
    claim: str  # the PersistentVolumeClaim holding the files
    input: str  # paths inside the claim
    output: str
    metric: str | None = None  # --eval: the report goes beside the output
    concurrency: int | None = None


def batch_job(plan: Plan, batch: BatchJob, name: str | None = None) -> Obj:
    name = name or f"{plan.name}-batch"
    command = ["vllm-fleet", "batch", service_url(plan), f"{MOUNT}/{batch.input.lstrip('/')}",
               "-o", f"{MOUNT}/{batch.output.lstrip('/')}", "--model", plan.served_name]  # fmt: skip
    if batch.metric:
        command += ["--eval", batch.metric, "--report", f"{MOUNT}/{batch.output.lstrip('/')}.report.json"]
    if batch.concurrency:
        command += ["--concurrency", str(batch.concurrency)]
    container = tool_container(plan, "batch", command, [{"name": "batch", "mountPath": MOUNT}])
    pod = {
        "automountServiceAccountToken": False,
        "restartPolicy": "Never",  # a failed pod is replaced by a new one, which resumes from the output
        "securityContext": pod_security(plan),
        "containers": [container],
        "volumes": [
            {"name": "batch", "persistentVolumeClaim": {"claimName": batch.claim}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    labels = meta(plan, name, COMPONENT)["labels"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(plan, name, COMPONENT),
        "spec": {
            "backoffLimit": RETRIES,
            "ttlSecondsAfterFinished": 86400,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
