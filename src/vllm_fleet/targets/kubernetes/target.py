"""The Kubernetes target: preflight, server-side apply, a watched wait, status, down, doctor, restart (what
`kubectl rollout restart` does, then the same wait), and the pods reached from here through a port-forward.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from vllm_fleet.errors import TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import (
    QUIET,
    Diagnosis,
    Finding,
    Replica,
    ReplicaStatus,
    Reporter,
    Target,
    UpResult,
)
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, connect
from vllm_fleet.targets.kubernetes.manifests.render import render
from vllm_fleet.verify import Check


class KubernetesTarget(Target):
    """A Plan on a cluster."""

    @property
    def _ns(self) -> str:
        return self.plan.spec.kubernetes.namespace

    async def preflight(self) -> list[Finding]:
        from vllm_fleet.targets.kubernetes.cluster.preflight import preflight

        async with connect(self.options, self._ns) as cluster:
            return await preflight(cluster, self.plan, render(self.plan), force=self.options.force_conflicts)

    async def up(self, report: Reporter = QUIET) -> UpResult:
        from vllm_fleet.targets.kubernetes.cluster.apply import apply_plan
        from vllm_fleet.targets.kubernetes.cluster.wait import wait_ready

        objects = render(self.plan)
        async with connect(self.options, self._ns) as cluster:
            report.phase(f"applying {len(objects)} objects to {cluster.server} (namespace {self._ns})")
            applied = await apply_plan(cluster, self.plan, objects, force=self.options.force_conflicts)
            counts = Counter(a.action for a in applied)
            if set(counts) <= {"unchanged"}:
                report.line(f"nothing to change: {counts['unchanged']} object(s) as applied before")
            else:
                report.line("applied: " + ", ".join(f"{n} {action}" for action, n in sorted(counts.items())))
            try:
                replicas = await wait_ready(cluster, self.plan, objects, report, self.options.timeout_s)
            except TargetError as exc:
                raise await _with_diagnosis(exc, cluster, self.plan) from exc
        return UpResult(replicas, extra={"applied": [a.to_dict() for a in applied]})

    async def down(self, purge: bool = False) -> list[Replica]:
        from vllm_fleet.targets.kubernetes.cluster.apply import delete_plan

        async with connect(self.options, self._ns) as cluster:
            done = await delete_plan(cluster, self.plan, purge=purge)
        return [Replica(i, str(a.ref), "engine") for i, a in enumerate(done) if a.action == "deleted"]

    async def status(self) -> list[ReplicaStatus]:
        from vllm_fleet.targets.kubernetes.cluster import rules
        from vllm_fleet.targets.kubernetes.cluster.wait import current_pods, pod_role

        async with connect(self.options, self._ns) as cluster:
            pods = await current_pods(cluster, self.plan, with_router=True)
        out: list[ReplicaStatus] = []
        seen: Counter[str] = Counter()  # each role's pods numbered from 0, as the local target's rows
        for pod, problem in pods:
            role = pod_role(pod)
            running = (pod.get("status") or {}).get("phase") == "Running"
            ready = rules.object_state(pod).status == "current"
            said = f"{problem.reason}: {problem.message} (fix: {problem.fix})" if problem else None
            replica = Replica(seen[role], f"pod/{pod['metadata']['name']}", role)
            seen[role] += 1
            out.append(ReplicaStatus(replica, running, ready, 0, said))
        return out

    @asynccontextmanager
    async def endpoints(self, direct: bool = False) -> AsyncIterator[list[str]]:
        """A port-forward to each ready engine pod, open while the caller verifies or benches through them
        (``direct`` or not: the router pods route to these same pods, and a pod is routed once it is ready)."""
        from vllm_fleet.targets.kubernetes.cluster import rules
        from vllm_fleet.targets.kubernetes.cluster.forward import forward
        from vllm_fleet.targets.kubernetes.cluster.wait import current_pods

        async with connect(self.options, self._ns) as cluster, AsyncExitStack() as stack:
            ready = [p for p, _ in await current_pods(cluster, self.plan) if rules.object_state(p).status == "current"]
            if not ready:
                raise TargetError(
                    f"no ready pod of {self.plan.name} in namespace {self._ns} to reach",
                    fix="vllm-fleet status SPEC (or doctor SPEC) says why",
                )
            port = self.plan.spec.kubernetes.port
            urls = [
                await stack.enter_async_context(forward(cluster, self._ns, p["metadata"]["name"], port)) for p in ready
            ]
            yield urls

    async def latency_check(self) -> Check:
        """The SLO from inside the namespace (a verify Job), not through the port-forward, which adds latency."""
        from vllm_fleet.targets.kubernetes.cluster.latency import measure_in_cluster

        async with connect(self.options, self._ns) as cluster:
            return await measure_in_cluster(cluster, self.plan)

    async def restart(self, report: Reporter = QUIET) -> UpResult:
        """`kubectl rollout restart` of the engine workload, then the rollout waited for as `up` waits for it:
        the new ReplicaSet's pods ready, the old ones gone, the Deployment's observedGeneration caught up.

        The rollout follows the Deployment's own maxSurge / maxUnavailable (render: one pod at a time), and a
        pod leaves through its preStop drain while the router already sends it nothing: no request fails.
        """
        from vllm_fleet.targets.kubernetes.cluster.restart import RESTARTED_AT, engine_workload, restart_workload
        from vllm_fleet.targets.kubernetes.cluster.wait import wait_ready

        objects = render(self.plan)
        async with connect(self.options, self._ns) as cluster:
            done = await restart_workload(cluster, self.plan, objects)
            report.line(f"restarting {done.ref}: {RESTARTED_AT} = {done.stamp}")
            extra = {"restarted": str(done.ref), "restartedAt": done.stamp}
            if done.ref.kind != "Deployment":
                # wait.py judges Deployments; the LeaderWorkerSet's rollout (its controller's status) is not
                # modelled by the fake API server the tests run against, so it is not waited for.
                watch = f"kubectl -n {self._ns} get leaderworkerset {done.ref.name} -w"
                note = f"the {done.ref.kind}'s rollout is not waited for: {watch}"
                return UpResult([], notes=[note], extra=extra)
            try:
                replicas = await wait_ready(
                    cluster, self.plan, [engine_workload(self.plan, objects)], report, self.options.timeout_s
                )
            except TargetError as exc:
                raise await _with_diagnosis(exc, cluster, self.plan) from exc
        return UpResult(replicas, extra=extra)

    async def doctor(self) -> list[Diagnosis]:
        from vllm_fleet.targets.kubernetes.cluster.doctor import collect, diagnose

        async with connect(self.options, self._ns) as cluster:
            return diagnose(await collect(cluster, self.plan))


async def _with_diagnosis(error: TargetError, cluster: Cluster, plan: Plan) -> TargetError:
    """``error`` with doctor's primary cause (the engine's own last words, when its log says why) added."""
    from vllm_fleet.targets.kubernetes.cluster.doctor import collect, diagnose

    found = diagnose(await collect(cluster, plan))
    primary = next((d for d in found if d.primary), None)
    if primary is None or primary.cause in error.message:
        return error
    return TargetError(
        error.message, fix=primary.fix or error.fix, details=f"doctor: {primary.cause}\n  evidence: {primary.evidence}"
    )
