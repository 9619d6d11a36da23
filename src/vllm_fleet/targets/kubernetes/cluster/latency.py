"""The latency check measured inside the cluster: run the verify Job, wait for it, read its JSON from the log.

The figure then carries where it was measured; the Job is deleted afterwards (its pod with it).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import UTC, datetime

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.cluster import rules
from vllm_fleet.targets.kubernetes.cluster.apply import delete
from vllm_fleet.targets.kubernetes.cluster.client import Cluster, errors
from vllm_fleet.targets.kubernetes.cluster.doctor import pod_log
from vllm_fleet.targets.kubernetes.cluster.objects import Ref, to_resource
from vllm_fleet.targets.kubernetes.manifests.verify import CONTAINER, DEADLINE_S, latency_job, service_url
from vllm_fleet.verify import Check

POLL_S = 1.0  # a Job of a few seconds: its status is read once a second (its pod's log needs it done anyway)


async def measure_in_cluster(cluster: Cluster, plan: Plan) -> Check:
    """The slo Check as the verify Job measured it from inside the namespace (never raises for its failure)."""
    from lightkube.resources.batch_v1 import Job
    from lightkube.resources.core_v1 import Event, Pod

    ns = plan.spec.kubernetes.namespace
    name = f"{plan.name}-verify-{secrets.token_hex(3)}"
    started = time.perf_counter()
    with errors(cluster.server, f"starting the verify Job {name}"):
        await cluster.client.apply(to_resource(latency_job(plan, name)))
    try:
        while time.perf_counter() - started < DEADLINE_S:
            job = await cluster.get_or_none(Job, name, namespace=ns)
            if job is not None and rules.object_state(job).status != "in-progress":
                break
            pods = await cluster.list_dicts(Pod, namespace=ns, labels={"job-name": name})
            events = await cluster.list_dicts(Event, namespace=ns) if pods else []
            now = datetime.now(UTC)
            problems = [p for pod in pods if (p := rules.pod_problem(pod, events, now=now, unschedulable_grace_s=10))]
            if problem := next((p for p in problems if not p.retryable), None):
                detail = f"the verify Job's pod cannot run: {problem.reason}: {problem.message} (fix: {problem.fix})"
                return Check("slo", False, detail, round(time.perf_counter() - started, 3))
            await asyncio.sleep(POLL_S)
        pods = await cluster.list_dicts(Pod, namespace=ns, labels={"job-name": name})
        log = await pod_log(cluster, ns, pods[0]["metadata"]["name"], CONTAINER, False) if pods else ""
    finally:
        await delete(cluster, Ref("batch/v1", "Job", name, ns))
    return _slo_check(log, name, plan, time.perf_counter() - started)


def _slo_check(log: str, job: str, plan: Plan, seconds: float) -> Check:
    where = f"measured inside the cluster by Job {job} against {service_url(plan)}"
    try:
        reports = json.loads(log[log.index("[") :])
        checks = {c["name"]: c for c in reports[0]["checks"]}
    except (ValueError, KeyError, IndexError, TypeError):
        tail = log.strip().splitlines()[-1:] or ["no output"]
        return Check("slo", False, f"the verify Job gave no result ({tail[0][:200]}); {where}", round(seconds, 3))
    if "slo" not in checks:
        failed = next((c for c in reports[0]["checks"] if not c["ok"]), None)
        why = f"{failed['name']} failed: {failed['detail']}" if failed else "no latency check ran"
        return Check("slo", False, f"{why}; {where}", round(seconds, 3))
    slo = checks["slo"]
    return Check("slo", bool(slo["ok"]), f"{slo['detail']}; {where}", round(seconds, 3))
