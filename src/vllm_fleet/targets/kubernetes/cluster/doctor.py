"""doctor: the cause of a broken deployment in one line, with the evidence and the fix, live or from a dump.

The evidence is what a person would read one `kubectl describe` at a time: pod status, events,
the claims, Jobs and Deployments, and the containers' logs (the previous run of a crashed one).
``rules`` judges each object and ``rules.logs`` reads the engine's own last words, so a
CrashLoopBackOff (proximate) comes with the error behind it (primary).

A dump is a directory of ``kubectl get KIND -o json`` Lists (``pods.json``, ``events.json``, ...) and
logs as ``logs/POD_CONTAINER.log`` and ``logs/POD_CONTAINER.previous.log``; missing files are less evidence.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from vllm_fleet.errors import SpecError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import Diagnosis
from vllm_fleet.targets.kubernetes.cluster import rules
from vllm_fleet.targets.kubernetes.cluster.client import Cluster
from vllm_fleet.targets.kubernetes.cluster.objects import Obj
from vllm_fleet.targets.kubernetes.cluster.rules.logs import read_log

DUMP_FILES = {
    "pods": "pods.json",
    "events": "events.json",
    "pvcs": "pvc.json",
    "pvs": "pv.json",
    "nodes": "nodes.json",
    "deployments": "deployments.json",
    "replicasets": "replicasets.json",
    "jobs": "jobs.json",
    "storageclasses": "storageclasses.json",
}
# The one kubectl command line that makes a dump doctor reads (the README shows it).
DUMP_COMMAND = (
    "mkdir -p dump/logs && for k in pods events pvc pv nodes deployments replicasets jobs storageclasses; do "
    "kubectl -n NS get $k -o json > dump/$k.json; done && for p in $(kubectl -n NS get pods -o name); do "
    "for c in $(kubectl -n NS get $p -o jsonpath='{.spec.initContainers[*].name} {.spec.containers[*].name}'); do "
    "kubectl -n NS logs $p -c $c > dump/logs/${p#pod/}_$c.log; "
    "kubectl -n NS logs $p -c $c --previous > dump/logs/${p#pod/}_$c.previous.log 2>/dev/null; done; done"
)


@dataclass
class Dump:
    """Everything doctor reads, as plain dicts; logs by (pod, container, previous)."""

    pods: list[Obj] = field(default_factory=list)
    events: list[Obj] = field(default_factory=list)
    pvcs: list[Obj] = field(default_factory=list)
    pvs: list[Obj] = field(default_factory=list)
    nodes: list[Obj] = field(default_factory=list)
    deployments: list[Obj] = field(default_factory=list)
    replicasets: list[Obj] = field(default_factory=list)
    jobs: list[Obj] = field(default_factory=list)
    storageclasses: list[Obj] = field(default_factory=list)
    logs: dict[tuple[str, str, bool], str] = field(default_factory=dict)


def read_dump(directory: Path) -> Dump:
    """A dump directory as a Dump; a file that is not a kubectl List is a SpecError naming it."""
    if not directory.is_dir():
        raise SpecError(f"--from {directory}: not a directory", fix=f"make a dump: {DUMP_COMMAND}")
    dump = Dump()
    for attr, name in DUMP_FILES.items():
        path = directory / name
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpecError(f"{path}: not JSON ({exc})", fix="write it with kubectl get KIND -o json") from exc
        items = data.get("items") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise SpecError(f"{path}: not a List (no items)", fix="write it with kubectl get KIND -o json")
        setattr(dump, attr, items)
    for pod in dump.pods:
        name = pod["metadata"]["name"]
        for container in _containers(pod):
            for previous in (False, True):
                path = directory / "logs" / f"{name}_{container}{'.previous' if previous else ''}.log"
                if path.is_file():
                    dump.logs[(name, container, previous)] = path.read_text(errors="replace")
    return dump


async def collect(cluster: Cluster, plan: Plan) -> Dump:
    """The live evidence for ``plan``: its namespace's objects and events, and its pods' logs (every pod with
    the spec's name label: the engine's, the router's, the Jobs'; each judged by the same rules)."""
    from lightkube.resources.apps_v1 import Deployment, ReplicaSet
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Event, Node, PersistentVolume, PersistentVolumeClaim, Pod
    from lightkube.resources.storage_v1 import StorageClass

    ns = plan.spec.kubernetes.namespace
    mine = {"app.kubernetes.io/name": plan.name}
    dump = Dump(
        pods=await cluster.list_dicts(Pod, namespace=ns, labels=mine),
        events=await cluster.list_dicts(Event, namespace=ns),
        pvcs=await cluster.list_dicts(PersistentVolumeClaim, namespace=ns),
        pvs=await cluster.list_dicts(PersistentVolume),
        nodes=await cluster.list_dicts(Node),
        deployments=await cluster.list_dicts(Deployment, namespace=ns, labels=mine),
        replicasets=await cluster.list_dicts(ReplicaSet, namespace=ns, labels=mine),
        jobs=await cluster.list_dicts(Job, namespace=ns, labels=mine),
        storageclasses=await cluster.list_dicts(StorageClass),
    )
    for pod in dump.pods:
        for container in _containers(pod):
            for previous in (False, True):
                text = await pod_log(cluster, ns, pod["metadata"]["name"], container, previous)
                if text:
                    dump.logs[(pod["metadata"]["name"], container, previous)] = text
    return dump


async def pod_log(cluster: Cluster, namespace: str, pod: str, container: str, previous: bool) -> str:
    """A container's log tail (the previous run's with ``previous``, which lightkube's log() cannot ask for).

    Empty when there is none (no previous run, a container not started) or the server cannot be asked:
    a missing log is less evidence, not an error.
    """
    from httpx2 import TransportError

    path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
    params = {"container": container, "tailLines": "200"} | ({"previous": "true"} if previous else {})
    try:
        response = await cluster.raw.get(path, params=params)
    except TransportError:
        return ""
    return str(response.text) if response.status_code == 200 else ""


def diagnose(dump: Dump, *, now: datetime | None = None) -> list[Diagnosis]:
    """Everything wrong in ``dump``, primary causes first, then what waiting will not fix."""
    now = now or datetime.now(UTC)
    found: list[Diagnosis] = []
    for pod in dump.pods:
        found += _pod(pod, dump, now)
    for deployment in dump.deployments:
        found += _replica_failure(deployment)
    for obj in [*dump.deployments, *dump.jobs, *dump.pvcs]:
        state = rules.object_state(obj)
        if state.status == "failed":
            found.append(
                Diagnosis(
                    f"{state.kind} {state.name} failed: {state.message}",
                    f"{state.kind}/{state.name} status",
                    "kubectl describe it; doctor names the pod-level cause above when there is one",
                    retryable=False,
                    primary=False,
                    subject=f"{state.kind.lower()}/{state.name}",
                )
            )
    unique = list({(d.subject, d.cause): d for d in found}.values())
    return sorted(unique, key=lambda d: (not d.primary, d.retryable))


def _replica_failure(deployment: Obj) -> list[Diagnosis]:
    """The ReplicaSet cannot create pods (a ResourceQuota, an admission webhook, PodSecurity): no pod to read."""
    name = deployment["metadata"]["name"]
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
            message = str(condition.get("message") or condition.get("reason") or "")
            quota = "exceeded quota" in message
            fix = (
                "raise the namespace's ResourceQuota, or lower replicas / resources.gpus, resources.cpu or "
                "resources.memory (vllm-fleet preflight shows the room)"
                if quota
                else "the message names what refused the pods (an admission webhook or PodSecurity): fix it there"
            )
            cause = ("ResourceQuota exceeded: " if quota else "pods cannot be created: ") + message
            evidence = f"deployment/{name} condition ReplicaFailure ({condition.get('reason', '')})"
            return [Diagnosis(cause, evidence, fix, False, True, f"deployment/{name}")]
    return []


def _readiness(pod: Obj, events: list[Obj]) -> Diagnosis | None:
    """Started, not crashing, but its readiness probe keeps failing (kubelet's Unhealthy events)."""
    name = pod["metadata"]["name"]
    status = pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    if status.get("phase") != "Running" or not containers or all(c.get("ready") for c in containers):
        return None
    failing = [
        e for e in events
        if (e.get("involvedObject") or e.get("regarding") or {}).get("name") == name
        and e.get("reason") == "Unhealthy" and "Readiness probe failed" in str(e.get("message") or e.get("note"))
    ]  # fmt: skip
    if not failing:
        return None
    text = str(failing[-1].get("message") or failing[-1].get("note"))
    return Diagnosis(
        f"the engine started but does not become ready: {text}",
        f"pod/{name} event Unhealthy (x{failing[-1].get('count', len(failing))})",
        "read its log (vllm-fleet doctor shows engine errors); a server that answers /health slowly under load "
        "needs more replicas, a stuck one a restart (vllm-fleet status SPEC)",
        retryable=False,
        primary=True,
        subject=f"pod/{name}",
    )


def _pod(pod: Obj, dump: Dump, now: datetime) -> list[Diagnosis]:
    name = pod["metadata"]["name"]
    problem = rules.pod_problem(pod, dump.events, now=now)
    out = []
    behind = None
    for container in _containers(pod):
        log = dump.logs.get((name, container, True)) or dump.logs.get((name, container, False)) or ""
        if finding := read_log(log):
            behind = Diagnosis(
                finding.cause,
                f"log of {_pod_name(pod)} container {container}: {finding.evidence}",
                finding.fix,
                finding.retryable,
                True,
                f"pod/{name}",
            )
            out.append(behind)
    if problem is None and behind is None and (unready := _readiness(pod, dump.events)):
        out.append(unready)
    if problem is not None:
        where = f"{_pod_name(pod)}" + (f" container {problem.container}" if problem.container else "")
        proximate = problem.reason == "CrashLoopBackOff" and behind is not None
        out.append(
            Diagnosis(
                f"{problem.reason}: {problem.message}",
                f"{where} status and events",
                problem.fix,
                problem.retryable,
                primary=not proximate,
                subject=f"pod/{name}",
            )
        )
    return out


def _pod_name(pod: Obj) -> str:
    """pod/NAME, and which part it plays when it is the router's (its rules are the engine pods')."""
    component = (pod["metadata"].get("labels") or {}).get("app.kubernetes.io/component")
    return f"pod/{pod['metadata']['name']}" + (" (router)" if component == "router" else "")


def _containers(pod: Obj) -> list[str]:
    spec = pod.get("spec") or {}
    return [c["name"] for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]]
