"""`status` and `doctor` on Kubernetes describe the router's pods (the NAME-router Deployment) beside the engines'.

A router pod is judged by the rules an engine pod is (cluster/rules): a crash loop fails `up`'s wait at once
and doctor names it, a pod no node admits is unschedulable; with router.enabled false there are no router rows.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.integration.kubernetes.scenario import GKE_L4, GPU_TAINT, SPEC, options, plan_of, ready_cluster, up
from tests.servers.fake_kube import fixture
from tests.servers.fake_kube.fake import FakeKube
from tests.servers.fake_kube.kubelet import CrashLoop
from vllm_fleet.errors import TargetError
from vllm_fleet.ops import lifecycle
from vllm_fleet.plan import Plan

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig
ROUTER_GONE = "Traceback (most recent call last):\nOSError: [Errno 98] Address already in use\n"


def _rows(plan: Plan, kubeconfig: Path) -> list[tuple[str, int, str, bool, str | None]]:
    return [
        (s.replica.role, s.replica.index, s.replica.url, s.healthy, s.problem)
        for s in asyncio.run(lifecycle.status(plan, options(kubeconfig)))
    ]


def test_status_has_a_row_per_router_pod_with_role_router(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    plan = plan_of()
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)
        rows = _rows(plan, fake_kubeconfig)
    [engine, *routers] = rows
    assert engine[:2] == ("engine", 0) and engine[2].startswith("pod/qwen-") and "router" not in engine[2]
    assert [(r[0], r[1]) for r in routers] == [("router", 0), ("router", 1)]  # router.replicas: 2 by default
    assert all(r[2].startswith("pod/qwen-router-") for r in routers)
    assert all(r[3] and r[4] is None for r in rows), rows


def test_status_without_a_router_has_no_router_rows(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    plan = plan_of(spec=SPEC + "router: {enabled: false}\n")
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)
        rows = _rows(plan, fake_kubeconfig)
    assert [(r[0], r[1], r[3]) for r in rows] == [("engine", 0, True)]


def test_a_crashing_router_pod_fails_up_at_once_and_status_and_doctor_name_it(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    fake_kube.script(CrashLoop(exit_code=1, logs=ROUTER_GONE), container="router")
    plan = plan_of()
    with fake_kube.run_controllers():
        with pytest.raises(TargetError, match=r"pod qwen-router-\S+ container router: CrashLoopBackOff") as err:
            up(plan, fake_kubeconfig, timeout_s=60)  # at once, not after the timeout
        rows = _rows(plan, fake_kubeconfig)
        found = asyncio.run(lifecycle.doctor(plan, options(fake_kubeconfig)))
    assert "doctor: the process exited with OSError: [Errno 98] Address already in use" in (err.value.details or "")
    engines = [r for r in rows if r[0] == "engine"]
    routers = [r for r in rows if r[0] == "router"]
    assert len(engines) == 1 and engines[0][3]  # the engine is fine
    assert len(routers) == 2 and all(not r[3] and "CrashLoopBackOff" in (r[4] or "") for r in routers), routers
    crashes = [d for d in found if d.cause.startswith("CrashLoopBackOff")]
    assert {d.subject for d in crashes} == {r[2] for r in routers}
    assert all("(router) container router status and events" in d.evidence for d in crashes), crashes
    assert all("kubectl logs qwen-router-" in d.fix and "router.* or kubernetes.*" in d.fix for d in crashes)
    assert all(not d.primary for d in crashes)  # proximate: the router's own last words are the primary cause
    last_words = [d for d in found if d.primary]
    assert {d.subject for d in last_words} == {r[2] for r in routers}
    assert all("(router) container router: OSError: [Errno 98]" in d.evidence for d in last_words), last_words


def test_a_router_pod_no_node_admits_is_diagnosed_unschedulable(
    fake_kube: FakeKube, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm_fleet.targets.kubernetes.cluster import wait
    from vllm_fleet.targets.kubernetes.cluster.client import connect
    from vllm_fleet.targets.kubernetes.cluster.doctor import collect, diagnose

    monkeypatch.setattr(wait, "UNSCHEDULABLE_GRACE_S", 2.5)  # > the 1 s resolution of API times
    fake_kube.add_node("gpu-0", labels=GKE_L4, gpus=1, taints=GPU_TAINT)  # only a tainted GPU node: no CPU pool
    fake_kube.add_storage_class("fast-ssd", binding_mode="WaitForFirstConsumer")
    plan = plan_of()
    with fake_kube.run_controllers():
        with pytest.raises(TargetError, match=r"pod qwen-router-\S+: Unschedulable") as err:
            up(plan, fake_kubeconfig, timeout_s=60)
        rows = _rows(plan, fake_kubeconfig)

        async def doctor_later() -> list:
            async with connect(options(fake_kubeconfig), plan.spec.kubernetes.namespace) as cluster:
                dump = await collect(cluster, plan)
            return diagnose(dump, now=datetime.now(UTC) + timedelta(minutes=5))  # past doctor's grace

        found = asyncio.run(doctor_later())
    assert "taint" in err.value.message + (err.value.fix or ""), err.value
    routers = [r for r in rows if r[0] == "router"]
    assert len(routers) == 2 and all("Unschedulable" in (r[4] or "") for r in routers), routers
    pending = [d for d in found if d.subject.startswith("pod/qwen-router-")]
    assert len(pending) == 2 and all(d.cause.startswith("Unschedulable") for d in pending), found
    assert all("(router)" in d.evidence for d in pending)
    assert not [d for d in found if d.subject.startswith("pod/") and "router" not in d.subject], found
