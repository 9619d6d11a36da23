"""`vllm-fleet restart SPEC` on Kubernetes: what `kubectl rollout restart` does, then `up`'s wait.

The fake API server rolls the Deployment as kube-controller-manager does when its pod template changes
(tests/servers/fake_kube/workloads.py: the ReplicaSet is named by the hash of the whole template, so the
restartedAt annotation alone makes a new one; rolling.go's steps under maxSurge / maxUnavailable).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.integration.kubernetes.scenario import NS, SPEC, Lines, options, plan_of, ready_cluster, up
from tests.servers.fake_kube import fixture
from tests.servers.fake_kube.fake import FakeKube
from tests.servers.fake_kube.kubelet import Run
from vllm_fleet.errors import TargetError
from vllm_fleet.ops import lifecycle
from vllm_fleet.targets.kubernetes.cluster.restart import RESTARTED_AT, restarted_at
from vllm_fleet.targets.kubernetes.manifests.render import render

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig
ENGINE = {"app.kubernetes.io/name": "qwen", "app.kubernetes.io/component": "engine"}


def _engine_pods(kube: FakeKube) -> list[dict[str, Any]]:
    return [
        p
        for p in kube.objects("v1", "Pod", NS)
        if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in ENGINE.items())
    ]


def _router_pods(kube: FakeKube) -> set[str]:
    return {p["metadata"]["name"] for p in kube.objects("v1", "Pod", NS) if "-router-" in p["metadata"]["name"]}


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


class Sampler:
    """Counts, every few ms while the rollout runs, the engine pods not terminating and the ready ones."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube, self.most, self.fewest_ready = kube, 0, 10**6
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.005):
            live = [p for p in _engine_pods(self.kube) if not p["metadata"].get("deletionTimestamp")]
            self.most = max(self.most, len(live))
            self.fewest_ready = min(self.fewest_ready, sum(1 for p in live if _ready(p)))

    def __enter__(self) -> Sampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def _scaling(kube: FakeKube) -> list[str]:
    events = [e for e in kube.events_for("qwen", NS) if e["reason"] == "ScalingReplicaSet"]
    return [e["message"] for e in sorted(events, key=lambda e: int(e["metadata"]["resourceVersion"]))]


@pytest.mark.parametrize(
    ("strategy", "most", "fewest_ready"),
    [
        ({"maxSurge": 0, "maxUnavailable": 1}, 2, 1),  # as render writes it: one pod down at a time, no spare GPU
        ({"maxSurge": 1, "maxUnavailable": 0}, 3, 2),  # as someone edited it: one surge pod, never one less ready
    ],
)
def test_restart_replaces_every_engine_pod_within_the_deployments_surge_and_unavailable(
    fake_kube: FakeKube, fake_kubeconfig: Path, strategy: dict[str, int], most: int, fewest_ready: int
) -> None:
    ready_cluster(fake_kube, gpu_nodes=3)
    fake_kube.script(Run(stop_s=0.3), container="vllm")  # a deleted pod takes a moment to go (its drain)
    plan, report = plan_of(replicas=2), Lines()
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)
        if strategy["maxSurge"]:

            def edit(obj: dict[str, Any]) -> None:
                obj["spec"]["strategy"]["rollingUpdate"] = dict(strategy)

            fake_kube.update_as("kubectl-edit", "apps/v1", "Deployment", "qwen", edit, namespace=NS)
            fake_kube.wait_for(lambda: len(_scaling(fake_kube)) == 1 and len(_engine_pods(fake_kube)) == 2)
        old = {p["metadata"]["name"] for p in _engine_pods(fake_kube)}
        old_rs = {p["metadata"]["labels"]["pod-template-hash"] for p in _engine_pods(fake_kube)}
        routers = {
            p["metadata"]["name"] for p in fake_kube.objects("v1", "Pod", NS) if "router" in p["metadata"]["name"]
        }
        before = _scaling(fake_kube)
        with Sampler(fake_kube) as sampler:
            result = asyncio.run(lifecycle.restart(plan, report, options(fake_kubeconfig)))
        fake_kube.wait_for(lambda: not (old & {p["metadata"]["name"] for p in _engine_pods(fake_kube)}), timeout_s=10)
    new = {r.url.removeprefix("pod/") for r in result.replicas}
    assert len(new) == 2 and not new & old, (new, old)  # every engine pod replaced
    assert [r.role for r in result.replicas] == ["engine", "engine"]
    now = {p["metadata"]["name"] for p in _engine_pods(fake_kube)}
    assert now == new  # the old pods terminated and are gone
    assert {
        p["metadata"]["name"] for p in fake_kube.objects("v1", "Pod", NS) if "router" in p["metadata"]["name"]
    } == routers
    stamp = result.extra["restartedAt"]
    assert datetime.fromisoformat(stamp).tzinfo is not None  # RFC 3339, with its offset
    deployment = fake_kube.get("apps/v1", "Deployment", "qwen", NS)
    assert deployment is not None
    assert deployment["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT] == stamp
    assert deployment["status"]["observedGeneration"] == deployment["metadata"]["generation"]
    for pod in _engine_pods(fake_kube):
        assert pod["metadata"]["annotations"][RESTARTED_AT] == stamp
        assert pod["metadata"]["labels"]["pod-template-hash"] not in old_rs
    assert any(f"{RESTARTED_AT} = {stamp}" in line for line in report.lines), report.lines
    # rolling.go's steps under the Deployment's own fenceposts, sampled and in its events
    assert sampler.most == most and sampler.fewest_ready >= fewest_ready, (sampler.most, sampler.fewest_ready)
    [old_hash] = old_rs
    [new_hash] = {p["metadata"]["labels"]["pod-template-hash"] for p in _engine_pods(fake_kube)}
    down, up_ = f"Scaled down replica set qwen-{old_hash} from", f"Scaled up replica set qwen-{new_hash} from"
    steps = _scaling(fake_kube)[len(before) :]
    if strategy["maxSurge"]:  # a surge pod first, an old one goes once it is available
        assert steps == [f"{up_} 0 to 1", f"{down} 2 to 1", f"{up_} 1 to 2", f"{down} 1 to 0"], steps
    else:  # an old pod goes first, its replacement after
        assert steps == [f"{down} 2 to 1", f"{up_} 0 to 1", f"{down} 1 to 0", f"{up_} 1 to 2"], steps


def test_restart_twice_in_one_second_still_rolls_and_a_later_up_keeps_it(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    plan = plan_of()
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)
        first = asyncio.run(lifecycle.restart(plan, options=options(fake_kubeconfig)))
        second = asyncio.run(lifecycle.restart(plan, options=options(fake_kubeconfig)))
        again = up(plan, fake_kubeconfig)  # the apply does not own the annotation: it stays, nothing rolls
    assert first.extra["restartedAt"] != second.extra["restartedAt"]
    assert first.replicas[0].url != second.replicas[0].url
    assert again.started.replicas == second.replicas
    actions = {a["kind"]: a["action"] for a in again.started.extra["applied"]}  # type: ignore[union-attr]
    assert actions["Deployment"] == "unchanged", actions


def test_restart_of_a_spec_not_deployed_says_to_run_up(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    with pytest.raises(TargetError, match=r"qwen is not deployed: no Deployment qwen in namespace llm") as err:
        asyncio.run(lifecycle.restart(plan_of(), options=options(fake_kubeconfig)))
    assert "vllm-fleet up SPEC" in (err.value.fix or "")
    assert fake_kube.objects("apps/v1", "Deployment", NS) == []  # nothing created


def test_restart_of_a_leader_worker_set_stamps_both_pod_templates(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    multinode = SPEC.replace(
        "resources: {gpus: 1,", "engine: {pipeline_parallel_size: 2}\nresources: {gpus: 1, nodes: 2,"
    )
    plan = plan_of(spec=multinode)
    [lws] = [o for o in render(plan) if o["kind"] == "LeaderWorkerSet"]
    fake_kube.crd("leaderworkerset.x-k8s.io", "LeaderWorkerSet", status=True)
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    fake_kube.create(lws, manager="vllm-fleet")
    result = asyncio.run(lifecycle.restart(plan, options=options(fake_kubeconfig)))
    live = fake_kube.get("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet", "qwen", NS)
    assert live is not None
    templates = live["spec"]["leaderWorkerTemplate"]
    stamp = result.extra["restartedAt"]
    for which in ("leaderTemplate", "workerTemplate"):
        assert templates[which]["metadata"]["annotations"][RESTARTED_AT] == stamp
        assert (
            templates[which]["metadata"]["labels"] == lws["spec"]["leaderWorkerTemplate"][which]["metadata"]["labels"]
        )
    assert result.replicas == [] and "rollout is not waited for" in result.notes[0]


def test_the_cli_restarts_a_kubernetes_spec(fake_kube: FakeKube, tmp_path: Path) -> None:
    ready_cluster(fake_kube)
    kubeconfig = fake_kube.kubeconfig(tmp_path / "kubeconfig")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("REPLICAS", "1").replace("EXTRA", ""))
    cli = [sys.executable, "-m", "vllm_fleet.cli", "restart", str(spec), "--kubeconfig", str(kubeconfig)]
    missing = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "vllm-fleet up SPEC" in missing.stdout + missing.stderr
    with fake_kube.run_controllers():
        up(plan_of(), kubeconfig)
        [old] = [p["metadata"]["name"] for p in _engine_pods(fake_kube)]
        done = subprocess.run([*cli, "--json", "--timeout", "60"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    [replica] = out["replicas"]
    assert replica["url"].startswith("pod/qwen-") and replica["url"] != f"pod/{old}"
    assert out["restartedAt"] and out["restarted"] == "Deployment/qwen"


def test_restarted_at_is_gos_rfc3339() -> None:
    from datetime import UTC, timedelta, timezone

    assert restarted_at(datetime(2026, 12, 2, 3, 4, 5, 678, tzinfo=UTC)) == "2026-12-02T03:04:05Z"
    cdt = timezone(timedelta(hours=-5))
    assert restarted_at(datetime(2025, 10, 10, 21, 43, 59, tzinfo=cdt)) == "2025-10-10T21:43:59-05:00"
