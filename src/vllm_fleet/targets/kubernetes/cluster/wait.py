"""Wait until what `up` applied really serves: watches (not polling), kstatus rules, fail fast, wait out stockouts.

Watches on the Deployment, its pods, the Jobs and claims that were applied, and the namespace's
events feed one picture of the deployment; every change (and a slow tick, for grace windows)
re-judges it with ``rules``: all current -> done; a doomed pod or a failed object -> fail at
once with its cause and fix; pods unschedulable for a cause that passes (a scale-up in progress,
a stockout in the zone) -> keep waiting, re-checking with exponential backoff and jitter and
saying what it waits for, until the overall timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from vllm_fleet.errors import TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import Replica, Reporter, Role
from vllm_fleet.targets.kubernetes.cluster import rules
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, errors
from vllm_fleet.targets.kubernetes.cluster.objects import Obj, Ref, resource_class
from vllm_fleet.targets.kubernetes.manifests.objects import router_selector, selector

DEFAULT_TIMEOUT_S = 30 * 60  # as the reference deploy-with-retry script
TICK_S = 2.0  # re-judge at least this often: grace windows pass without an event
BACKOFF_S = (5.0, 120.0)  # first and largest gap between "still waiting for capacity" reports
# How long a pod may be unschedulable before it is judged: cluster-autoscaler scans every 10 s and
# needs a pass or two to answer with TriggeredScaleUp or NotTriggerScaleUp.
UNSCHEDULABLE_GRACE_S = 60.0
COMPONENT = "app.kubernetes.io/component"  # the label that tells an engine pod from a router pod


@dataclass
class Seen:
    """The latest version of every watched object, by kind and name, and the events seen."""

    objects: dict[str, dict[str, Obj]] = field(default_factory=dict)
    events: list[Obj] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, kind: str, change: str, obj: Obj) -> None:
        if kind == "Event":
            self.events.append(obj)
        elif change == "DELETED":
            self.objects.setdefault(kind, {}).pop(obj["metadata"]["name"], None)
        else:
            self.objects.setdefault(kind, {})[obj["metadata"]["name"]] = obj
        self.changed.set()

    def of(self, kind: str) -> list[Obj]:
        return list(self.objects.get(kind, {}).values())


@dataclass(frozen=True)
class Verdict:
    """Where the deployment stands now."""

    done: bool
    summary: str
    failure: rules.PodProblem | rules.ObjectState | None = None
    waiting_for_capacity: rules.PodProblem | None = None


async def wait_ready(
    cluster: Cluster, plan: Plan, objects: list[Obj], report: Reporter, timeout_s: float | None = None
) -> list[Replica]:
    """Return the ready pods as Replicas; raise a TargetError with the cause (and fix) when it cannot become ready."""
    seen = Seen()
    watches = [asyncio.create_task(w) for w in _watches(cluster, plan, objects, seen)]
    started = time.monotonic()
    deadline = started + (timeout_s or DEFAULT_TIMEOUT_S)
    backoff, next_note = BACKOFF_S[0], 0.0
    try:
        while True:
            verdict = judge(plan, objects, seen, now=datetime.now(UTC))
            _show(plan, seen, report, time.monotonic() - started)
            if verdict.done:
                return _replicas(plan, seen)
            if verdict.failure is not None:
                raise _failed(verdict.failure)
            now = time.monotonic()
            if verdict.waiting_for_capacity is not None and now >= next_note:
                cause = verdict.waiting_for_capacity
                report.line(f"waiting for GPU capacity: {cause.message} (next check in {backoff:.0f} s)")
                next_note = now + backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, BACKOFF_S[1])
            if now > deadline:
                waiting = verdict.waiting_for_capacity
                raise TargetError(
                    f"{plan.name} not ready after {timeout_s or DEFAULT_TIMEOUT_S:.0f} s: {verdict.summary}"
                    + (f"; still {waiting.message}" if waiting else ""),
                    fix=waiting.fix if waiting else "vllm-fleet status SPEC; raise --timeout if it is only slow",
                )
            seen.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.changed.wait(), min(TICK_S, max(deadline - now, 0.1)))
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)


def judge(plan: Plan, objects: list[Obj], seen: Seen, *, now: datetime) -> Verdict:
    """The deployment's state from what the watches saw (pure: tested on recorded objects)."""
    pods = seen.of("Pod")  # the engine's and the router's: a doomed router pod fails the wait as an engine's does
    scheduled = any((p.get("spec") or {}).get("nodeName") for p in pods if pod_role(p) == "engine")
    states = []
    for obj in objects:
        if obj["kind"] not in WATCHED:
            continue
        live = seen.objects.get(obj["kind"], {}).get(obj["metadata"]["name"])
        if live is None:
            states.append(rules.ObjectState(obj["kind"], obj["metadata"]["name"], "in-progress", "not seen yet"))
            continue
        states.append(rules.object_state(live, wait_for_first_consumer=_wffc(obj, objects), pods_scheduled=scheduled))
    capacity = None
    for pod in pods:
        # pod_problem picks this pod's events itself
        problem = rules.pod_problem(pod, seen.events, now=now, unschedulable_grace_s=UNSCHEDULABLE_GRACE_S)
        if problem is None:
            continue
        if not problem.retryable:
            return Verdict(False, problem.message, failure=problem)
        capacity = capacity or problem
    if failed := [s for s in states if s.status == "failed"]:
        return Verdict(False, failed[0].message, failure=failed[0])
    pending = [s for s in states if s.status != "current"]
    summary = "; ".join(f"{s.kind}/{s.name}: {s.message}" for s in pending) or "ready"
    return Verdict(not pending and capacity is None, summary, waiting_for_capacity=capacity)


WATCHED = ("Deployment", "Job", "PersistentVolumeClaim")


def _wffc(claim: Obj, objects: list[Obj]) -> bool:
    """Is ``claim`` on a WaitForFirstConsumer StorageClass that we render (else the server's default rules)?"""
    cls_name = (claim.get("spec") or {}).get("storageClassName")
    return any(
        o["kind"] == "StorageClass"
        and o["metadata"]["name"] == cls_name
        and o.get("volumeBindingMode") == "WaitForFirstConsumer"
        for o in objects
    )


def _watches(cluster: Cluster, plan: Plan, objects: list[Obj], seen: Seen) -> list[Coroutine[Any, Any, None]]:
    from lightkube.resources.core_v1 import Event, Pod

    ns = plan.spec.kubernetes.namespace
    out = [
        _watch(cluster, Pod, "Pod", ns, seen, labels=pod_labels(plan)),
        _watch(cluster, Event, "Event", ns, seen),
    ]
    for kind in WATCHED:
        if refs := [Ref.of(o) for o in objects if o["kind"] == kind]:
            out.append(
                _watch(cluster, resource_class(refs[0]), kind, ns, seen, labels={"app.kubernetes.io/name": plan.name})
            )
    return out


async def _watch(
    cluster: Cluster, resource: Any, kind: str, namespace: str, seen: Seen, labels: Mapping[str, Any] | None = None
) -> None:
    """Feed ``seen`` from a watch (the server sends the current objects first, then changes)."""
    with errors(cluster.server, f"watching {kind}"):
        async for change, obj in cluster.client.watch(resource, namespace=namespace, labels=dict(labels or {}) or None):
            seen.put(kind, change, dict(obj.to_dict()))


async def current_pods(
    cluster: Cluster, plan: Plan, *, with_router: bool = False
) -> list[tuple[Obj, rules.PodProblem | None]]:
    """The engine pods of ``plan`` now, by name, each with what is wrong with it (for status); ``with_router``:
    then the router's pods, when the spec has a router (``pod_role`` tells them apart)."""
    from lightkube.resources.core_v1 import Event, Pod

    ns = plan.spec.kubernetes.namespace
    found = await cluster.list_dicts(Pod, namespace=ns, labels=pod_labels(plan, with_router=with_router))
    pods = sorted(found, key=lambda p: (pod_role(p) != "engine", p["metadata"]["name"]))
    events = await cluster.list_dicts(Event, namespace=ns) if pods else []
    now = datetime.now(UTC)
    return [(p, rules.pod_problem(p, events, now=now, unschedulable_grace_s=UNSCHEDULABLE_GRACE_S)) for p in pods]


def pod_labels(plan: Plan, *, with_router: bool = True) -> dict[str, Any]:
    """The label selector of the engine pods and, ``with_router`` when the spec has one, the router's
    (their labels differ only in the component: objects.selector, objects.router_selector)."""
    from lightkube.operators import in_

    if not (with_router and plan.spec.router.enabled):
        return dict(selector(plan))
    both = {**selector(plan), **router_selector(plan)}
    return both | {"app.kubernetes.io/component": in_([selector(plan)[COMPONENT], router_selector(plan)[COMPONENT]])}


def pod_role(pod: Obj) -> Role:
    """A pod's part: the router's (its component label says so) or an engine's."""
    component = ((pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT)
    return "router" if component == "router" else "engine"


def _show(plan: Plan, seen: Seen, report: Reporter, elapsed_s: float) -> None:
    """One row per pod (what it does, restarts, time against the Plan's start-up budget), and the newest event."""
    budget = plan.startup_budget_s
    pods = sorted(seen.of("Pod"), key=lambda p: (pod_role(p) != "engine", p["metadata"]["name"]))
    for i, pod in enumerate(pods):  # the router's rows below the engines'; their names say which is which
        restarts = sum(c.get("restartCount", 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])
        again = f", {restarts} restart(s)" if restarts else ""
        if pod_role(pod) == "router":  # no model to load: not ready means no engine is ready yet (its /health)
            phase = pod_phase(pod).replace("loading the model", "waiting for a ready engine")
            report.replica(i, pod["metadata"]["name"], f"router: {phase}{again}")
            continue
        report.replica(
            i, pod["metadata"]["name"], f"{pod_phase(pod)}{again} {_mmss(elapsed_s)} (budget {_mmss(budget)})"
        )
    if seen.events:
        newest = seen.events[-1]  # the watch delivers them in the order the server wrote them
        about = (newest.get("involvedObject") or newest.get("regarding") or {}).get("name", "")
        text = newest.get("message") or newest.get("note") or ""
        report.phase(f"newest event: {newest.get('type', '')} {newest.get('reason', '')} {about}: {text}"[:200])


def pod_phase(pod: Obj) -> str:
    """What a pod is doing, in the Plan's phases: scheduling, image pull, weights staging, model load."""
    status = pod.get("status") or {}
    if not (pod.get("spec") or {}).get("nodeName"):
        return "waiting for a node"
    for init in status.get("initContainerStatuses") or []:
        if not init.get("ready") and "running" in (init.get("state") or {}):
            return f"{'staging weights' if init.get('name') == 'stage' else 'running ' + str(init.get('name'))}"
    containers = status.get("containerStatuses") or []
    waiting = [c for c in containers if "waiting" in (c.get("state") or {})]
    if waiting or not containers:
        reason = (waiting[0]["state"]["waiting"].get("reason") if waiting else None) or "starting"
        return "pulling the image" if reason in ("ContainerCreating", "PodInitializing") else reason
    if all(c.get("ready") for c in containers):
        return "ready"
    return "loading the model"


def _mmss(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _replicas(plan: Plan, seen: Seen) -> list[Replica]:
    pods = sorted(
        (p for p in seen.of("Pod") if pod_role(p) == "engine" and rules.object_state(p).status == "current"),
        key=lambda p: p["metadata"]["name"],
    )
    return [Replica(i, f"pod/{p['metadata']['name']}", "engine") for i, p in enumerate(pods)]


def _failed(failure: rules.PodProblem | rules.ObjectState) -> TargetError:
    if isinstance(failure, rules.PodProblem):
        where = f"pod {failure.pod}" + (f" container {failure.container}" if failure.container else "")
        return TargetError(f"{where}: {failure.reason}: {failure.message}", fix=failure.fix)
    return TargetError(f"{failure.kind}/{failure.name} failed: {failure.message}", fix="vllm-fleet status SPEC")
