"""restart: what `kubectl rollout restart` does, to the engine workload of a Plan.

kubectl stamps the pod template with the annotation ``kubectl.kubernetes.io/restartedAt`` set to
``time.Now().Format(time.RFC3339)`` and patches the object (and refuses a paused Deployment: "can't
restart paused deployment (run rollout resume first)"); staging/src/k8s.io/kubectl/pkg/polymorphichelpers/
objectrestarter.go. The template changes, so the Deployment controller, which names a ReplicaSet by the hash
of the whole pod template (pkg/controller/deployment/util ComputeHash), makes a new ReplicaSet and rolls to
it under the Deployment's own maxSurge / maxUnavailable; the caller waits for that as `up` does (wait.py).

A LeaderWorkerSet (resources.nodes > 1) gets the same annotation on both of its pod templates (leader and
worker): the LWS controller rolls the groups when either template changes.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime

from vllm_fleet.errors import TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, errors
from vllm_fleet.targets.kubernetes.cluster.objects import Obj, Ref, resource_class

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
# The pod templates of each workload kind, as paths under .spec.
TEMPLATES = {
    "Deployment": (("template",),),
    "LeaderWorkerSet": (("leaderWorkerTemplate", "leaderTemplate"), ("leaderWorkerTemplate", "workerTemplate")),
}


@dataclass(frozen=True)
class Restarted:
    """The workload that was patched, the annotation's value, and the object as the server returned it."""

    ref: Ref
    stamp: str
    live: Obj


def restarted_at(now: datetime | None = None) -> str:
    """Go's ``time.Now().Format(time.RFC3339)``: local time to the second with its offset, ``Z`` for UTC."""
    text = (now or datetime.now().astimezone()).isoformat(timespec="seconds")
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def engine_workload(plan: Plan, objects: list[Obj]) -> Obj:
    """The rendered object that runs the engine pods: the Deployment, or the LeaderWorkerSet when multi-node."""
    for obj in objects:
        if obj["kind"] in TEMPLATES and obj["metadata"]["name"] == plan.name:
            return obj
    raise TargetError(f"{plan.name} renders no engine Deployment or LeaderWorkerSet", fix="vllm-fleet render SPEC")


async def restart_workload(cluster: Cluster, plan: Plan, objects: list[Obj]) -> Restarted:
    """Stamp the engine workload's pod template(s) with ``restartedAt`` (a merge patch), as kubectl does.

    A workload that does not exist is a TargetError whose fix is `vllm-fleet up SPEC`.
    """
    from lightkube.types import PatchType

    ref = Ref.of(engine_workload(plan, objects))
    resource = resource_class(ref)
    live = await cluster.get_or_none(resource, ref.name, namespace=ref.namespace)
    if live is None:
        raise TargetError(
            f"{plan.name} is not deployed: no {ref.kind} {ref.name} in namespace {ref.namespace} at {cluster.server}",
            fix="vllm-fleet up SPEC (restart replaces the pods of a running deployment)",
        )
    if (live.get("spec") or {}).get("paused"):
        raise TargetError(
            f"can't restart paused {ref.kind.lower()} {ref.name} (objectrestarter.go refuses it too)",
            fix=f"kubectl -n {ref.namespace} rollout resume {ref.kind.lower()}/{ref.name}, then restart again",
        )
    stamp = restarted_at()
    if stamp in _stamps(live, ref.kind):
        # The same second as the restart before: the same template, so no rollout. Wait for the next one.
        await asyncio.sleep(1.0)
        stamp = restarted_at()
    # A merge patch (RFC 7386): the only kind a custom resource (the LeaderWorkerSet) accepts, and for a
    # Deployment the same result as kubectl's strategic one, since only a map's key is set.
    patch = {"spec": _nest(ref.kind, {"metadata": {"annotations": {RESTARTED_AT: stamp}}})}
    with errors(cluster.server, f"restarting {ref}"):
        patched = await cluster.client.patch(
            resource, ref.name, patch, namespace=ref.namespace, patch_type=PatchType.MERGE
        )
    return Restarted(ref, stamp, dict(patched.to_dict()))


def _nest(kind: str, template_patch: Obj) -> Obj:
    """``template_patch`` at every pod template path of ``kind``, as one patch body under .spec."""
    out: Obj = {}
    for path in TEMPLATES[kind]:
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = template_patch
    return out


def _stamps(obj: Obj, kind: str) -> set[str]:
    """The restartedAt values on ``obj``'s pod templates now."""
    out = set()
    for path in TEMPLATES[kind]:
        node = obj.get("spec") or {}
        for key in path:
            node = node.get(key) or {}
        if value := ((node.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT):
            out.add(str(value))
    return out
