"""A replica across several nodes (resources.nodes > 1): a LeaderWorkerSet (leaderworkerset.x-k8s.io/v1, the
Kubernetes SIG project for multi-host inference), vLLM on Ray (issue 16).

Each replica is a group of ``resources.nodes`` pods: the leader starts the Ray head, then vLLM's API server
with --tensor-parallel-size T --pipeline-parallel-size P --distributed-executor-backend ray; each worker
joins the head at $LWS_LEADER_ADDRESS (set by LWS) and blocks. The leader carries the probes and the drain
(the same ones as a Deployment's engine); a pod failing restarts its whole group (RecreateGroupOnPodRestart),
since a Ray cluster missing a member cannot serve. The Services select leaders only
(objects.endpoint_selector): the client one without a router, NAME-engine behind it.
"""

from __future__ import annotations

from vllm_fleet import engine
from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import Obj, meta
from vllm_fleet.targets.kubernetes.manifests.storage import StorageParts
from vllm_fleet.targets.kubernetes.manifests.workload import engine_container, pod_template

API = "leaderworkerset.x-k8s.io/v1"
RAY_PORT = 6379


def leader_worker_set(plan: Plan, parts: StorageParts) -> Obj:
    """The LeaderWorkerSet: one group of resources.nodes pods per replica."""
    spec = plan.spec
    head = f'ray start --head --port={RAY_PORT} && exec python3 -m {engine.API_SERVER_MODULE} "$@"'
    leader = engine_container(plan, ["sh", "-c", head, "vllm", *plan.pod_engine_args])
    join = f'exec ray start --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" --block'
    worker = engine_container(plan, ["sh", "-c", join])
    worker["name"] = "ray-worker"
    for key in ("args", "ports", "startupProbe", "readinessProbe", "livenessProbe", "lifecycle"):
        worker.pop(key, None)
    body: Obj = {}
    if spec.scaling.mode == "none":
        body["replicas"] = spec.replicas
    body |= {
        "startupPolicy": "LeaderCreated",
        # As the Deployment: no surge (a spare multi-node GPU group rarely exists), one group at a time.
        "rolloutStrategy": {"type": "RollingUpdate",
                            "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0}},
        "leaderWorkerTemplate": {
            "size": spec.resources.nodes,
            "restartPolicy": "RecreateGroupOnPodRestart",
            "leaderTemplate": pod_template(plan, parts, [leader]),
            "workerTemplate": pod_template(plan, parts, [worker]),
        },
    }  # fmt: skip
    return {"apiVersion": API, "kind": "LeaderWorkerSet", "metadata": meta(plan, plan.name), "spec": body}
