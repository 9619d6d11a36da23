"""`preflight`, `up`, `status` and `down` of a Kubernetes spec, through the real lightkube client, against
the fake API server (tests/servers/fake_kube) playing scheduler, kubelet, controllers and autoscaler.

Each test is one scenario of the lifecycle issue. With VLLM_FLEET_TEST_KUBECONFIG naming a real
cluster the same flows can be pointed at it; these scenarios script the cluster's behaviour, so here
they need the fake, and say so when it is absent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.integration.kubernetes.scenario import (
    GKE_L4,
    GPU_TAINT,
    NS,
    SPEC,
    Lines,
    kinds,
    options,
    plan_of,
    ready_cluster,
    script_verify_job,
    up,
)
from tests.servers import fake_engine
from tests.servers.fake_kube import fixture
from tests.servers.fake_kube.fake import FakeKube
from tests.servers.fake_kube.kubelet import CrashLoop, ImagePullError
from vllm_fleet.errors import FleetError, TargetError
from vllm_fleet.ops import lifecycle

pytestmark = pytest.mark.integration
fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig


def test_happy_path_applies_waits_until_ready_and_verifies_through_a_port_forward(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    script_verify_job(fake_kube, p95_s=0.4)
    plan, report = plan_of(), Lines()
    with fake_engine.running("--models", "qwen") as engine, fake_kube.run_controllers():
        fake_kube.forward_pods("127.0.0.1", {8000: engine.port})  # the pods' port 8000 is this engine
        outcome = up(plan, fake_kubeconfig, report, verify=True)
    assert [r.url for r in outcome.started.replicas] and outcome.started.replicas[0].url.startswith("pod/qwen-")
    assert kinds(fake_kube, "apps/v1", "Deployment") == ["qwen", "qwen-router"]  # the router waited for too
    assert "qwen-inventory" in kinds(fake_kube, "v1", "ConfigMap")
    assert outcome.verified and [c.name for c in outcome.reports[0].checks] == [
        "health",
        "models",
        "chat",
        "stream",
        "slo",
    ]
    assert outcome.reports[0].url.startswith("http://127.0.0.1:") and engine.url not in outcome.reports[0].url
    slo = outcome.reports[0].checks[-1]
    assert "p95 0.400 s" in slo.detail and "measured inside the cluster by Job qwen-verify-" in slo.detail
    assert not [j for j in fake_kube.objects("batch/v1", "Job", NS) if "verify" in j["metadata"]["name"]]
    assert any(line.startswith("applied: ") and "created" in line for line in report.lines), report.lines
    status = asyncio.run(lifecycle.status(plan, options(fake_kubeconfig)))
    assert [(s.replica.role, s.healthy) for s in status] == [("engine", True), ("router", True), ("router", True)]


def _nothing_written(kube: FakeKube) -> bool:
    return not kube.objects("apps/v1", "Deployment", NS) and kube.get("v1", "Namespace", NS) is None


def test_gpus_short_without_an_autoscaler_fails_preflight_and_writes_nothing(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube, gpu_nodes=1)
    with pytest.raises(
        TargetError, match=r"preflight: gpus: 1 nvidia-l4 GPU\(s\) short: 1 of 2 replica\(s\) fit"
    ) as err:
        up(plan_of(replicas=2), fake_kubeconfig)
    assert "add GPU nodes" in (err.value.fix or "")
    assert _nothing_written(fake_kube)


def test_gpus_short_with_an_autoscaler_waits_for_the_scale_up_then_serves(
    fake_kube: FakeKube, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm_fleet.targets.kubernetes.cluster import wait

    monkeypatch.setattr(wait, "UNSCHEDULABLE_GRACE_S", 2.5)  # > the 1 s resolution of API times
    monkeypatch.setattr(wait, "BACKOFF_S", (0.2, 1.0))
    ready_cluster(fake_kube, gpu_nodes=0)
    fake_kube.set_autoscaler_status()
    report = Lines()
    with fake_kube.run_controllers():
        result: dict[str, object] = {}
        runner = _in_thread(lambda: result.setdefault("up", up(plan_of(), fake_kubeconfig, report)))
        fake_kube.wait_for(lambda: fake_kube.unschedulable_pods(), timeout_s=10)
        fake_kube.autoscaler_scale_up("gpu-pool", "gpu-new", after_s=4.5, labels=GKE_L4, gpus=1, taints=GPU_TAINT)
        runner.join(timeout=30)
    outcome = result["up"]
    assert isinstance(outcome, lifecycle.UpOutcome) and len(outcome.started.replicas) == 1
    assert any("cluster-autoscaler is present" in line for line in report.lines), report.lines
    assert any(line.startswith("waiting for GPU capacity:") and "TriggeredScaleUp" in line for line in report.lines)


def test_a_stockout_that_never_ends_times_out_with_its_cause(
    fake_kube: FakeKube, fake_kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vllm_fleet.targets.kubernetes.cluster import wait

    monkeypatch.setattr(wait, "UNSCHEDULABLE_GRACE_S", 2.5)  # > the 1 s resolution of API times
    ready_cluster(fake_kube, gpu_nodes=0)
    fake_kube.set_autoscaler_status()
    with fake_kube.run_controllers():
        errors: list[BaseException] = []
        runner = _in_thread(lambda: up(plan_of(), fake_kubeconfig, timeout_s=6), errors)
        fake_kube.wait_for(lambda: fake_kube.unschedulable_pods(), timeout_s=10)
        fake_kube.autoscaler_failed_scale_up("us-central1-a", error="GCE out of resources")
        runner.join(timeout=30)
    [error] = errors
    assert isinstance(error, TargetError) and "not ready after 6 s" in error.message
    assert "GCE out of resources" in error.message


def test_a_missing_storage_class_fails_preflight(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    fake_kube.add_node("gpu-0", labels=GKE_L4, gpus=1, taints=GPU_TAINT)
    with pytest.raises(TargetError, match=r"StorageClass fast-ssd .* does not exist"):
        up(plan_of(), fake_kubeconfig)
    assert _nothing_written(fake_kube)


def test_a_secret_without_its_key_fails_preflight_and_no_value_is_shown(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": NS},
              "data": {"TOKEN": "c2VjcmV0LXZhbHVlLTQy"}}  # fmt: skip
    fake_kube.create(secret)
    plan = plan_of(extra=", secrets: {hf_token: hf}")
    findings = asyncio.run(lifecycle.preflight(plan, options(fake_kubeconfig)))
    [failed] = [f for f in findings if f.severity == "fail"]
    assert failed.check == "secrets" and "Secret hf lacks key(s) HF_TOKEN" in failed.detail
    text = repr(findings)
    assert "c2VjcmV0LXZhbHVlLTQy" not in text and "secret-value-42" not in text


def test_a_missing_crd_fails_preflight_with_the_choice(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    monitored = SPEC.replace("monitoring: {scraper: none, dashboard: false}", "monitoring: {scraper: podmonitoring}")
    plan = plan_of(spec=monitored)
    findings = asyncio.run(lifecycle.preflight(plan, options(fake_kubeconfig)))
    [crd] = [f for f in findings if f.check == "crd" and "podmonitorings" in f.detail]
    assert crd.severity == "fail" and "podmonitorings.monitoring.googleapis.com is not installed" in crd.detail
    assert "monitoring.scraper" in (crd.fix or "")
    fake_kube.crd("monitoring.googleapis.com", "PodMonitoring")
    again = asyncio.run(lifecycle.preflight(plan, options(fake_kubeconfig)))
    # the alert rules beside it (monitoring.alerts, on by default) need GKE's Rules CRD too (issue 16)
    [rules] = [f for f in again if f.check == "crd" and f.severity == "fail"]
    assert "rules.monitoring.googleapis.com is not installed" in rules.detail
    assert "monitoring.alerts" in (rules.fix or "")
    fake_kube.crd("monitoring.googleapis.com", "Rules", plural="rules")
    again = asyncio.run(lifecycle.preflight(plan, options(fake_kubeconfig)))
    assert [f.severity for f in again if f.check == "crd"] == ["pass", "pass"]


def test_a_conflict_with_another_field_manager_names_it_and_force_takes_the_field(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    plan = plan_of()
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)

        def surge(obj: dict) -> None:
            obj["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = 1

        fake_kube.update_as("kubectl-edit", "apps/v1", "Deployment", "qwen", surge, namespace=NS)
        with pytest.raises(TargetError, match='conflict with "kubectl-edit"') as err:
            up(plan, fake_kubeconfig)
        assert "--force-conflicts" in (err.value.fix or "")
        up(plan, fake_kubeconfig, force_conflicts=True)
    deployment = fake_kube.get("apps/v1", "Deployment", "qwen", NS)
    assert deployment is not None and deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


@pytest.mark.parametrize(
    ("behaviour", "reason", "words"),
    [
        (CrashLoop(exit_code=1, logs="RuntimeError: Failed to infer device type"), "CrashLoopBackOff", "exit code 1"),
        (ImagePullError(), "ErrImagePull|ImagePullBackOff", "kubernetes.image"),
    ],
)
def test_a_doomed_pod_fails_the_wait_at_once_with_its_cause(
    fake_kube: FakeKube, fake_kubeconfig: Path, behaviour: object, reason: str, words: str
) -> None:
    ready_cluster(fake_kube)
    fake_kube.script(behaviour, container="vllm")  # type: ignore[arg-type]
    started = time.monotonic()
    with fake_kube.run_controllers(), pytest.raises(TargetError, match=reason) as err:
        up(plan_of(), fake_kubeconfig, timeout_s=120)
    assert time.monotonic() - started < 20  # not the progress deadline, not the timeout
    assert words in err.value.message + (err.value.fix or "")


def test_a_changed_spec_prunes_what_it_no_longer_renders(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube, gpu_nodes=2)
    with fake_kube.run_controllers():
        up(plan_of(replicas=2), fake_kubeconfig)
        assert kinds(fake_kube, "policy/v1", "PodDisruptionBudget") == ["qwen", "qwen-router"]
        without_pdb = SPEC.replace("monitoring:", "availability: {pod_disruption_budget: false}\nmonitoring:")
        outcome = up(plan_of(replicas=2, spec=without_pdb), fake_kubeconfig)
    assert kinds(fake_kube, "policy/v1", "PodDisruptionBudget") == []
    actions = {(a["kind"], a["action"]) for a in outcome.started.extra["applied"]}  # type: ignore[union-attr]
    assert ("PodDisruptionBudget", "pruned") in actions and ("Deployment", "unchanged") in actions


def test_a_second_up_with_nothing_to_change_says_so(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    report = Lines()
    with fake_kube.run_controllers():
        up(plan_of(), fake_kubeconfig)
        up(plan_of(), fake_kubeconfig, report)
    assert any(line.startswith("nothing to change:") for line in report.lines), report.lines


def test_down_deletes_the_inventory_keeps_the_weights_claim_and_purge_removes_it(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    plan = plan_of()
    with fake_kube.run_controllers():
        up(plan, fake_kubeconfig)
        deleted = asyncio.run(lifecycle.down(plan, options=options(fake_kubeconfig)))
        fake_kube.settle()
    assert "Deployment/qwen" in [r.url for r in deleted]
    assert kinds(fake_kube, "apps/v1", "Deployment") == [] and kinds(fake_kube, "v1", "Service") == []
    assert kinds(fake_kube, "v1", "PersistentVolumeClaim") == ["qwen-cache"]
    assert fake_kube.get("v1", "Namespace", NS) is not None  # created by up, never deleted
    purged = asyncio.run(lifecycle.down(plan, purge=True, options=options(fake_kubeconfig)))
    fake_kube.settle()  # the claim's protection finalizer goes once no pod uses it
    assert [r.url for r in purged] == ["PersistentVolumeClaim/qwen-cache"]
    assert kinds(fake_kube, "v1", "PersistentVolumeClaim") == []
    assert "qwen-inventory" not in kinds(fake_kube, "v1", "ConfigMap")


def test_an_unreachable_server_and_refused_credentials_say_what_to_do(fake_kube: FakeKube, tmp_path: Path) -> None:
    good = fake_kube.kubeconfig(tmp_path / "good")
    bad = tmp_path / "bad"
    bad.write_text(good.read_text().replace("fake-token", "wrong-token"))
    [refused] = asyncio.run(lifecycle.preflight(plan_of(), options(bad)))
    assert refused.severity == "fail" and "401" in refused.detail and "credentials" in (refused.fix or "")
    gone = tmp_path / "gone"
    gone.write_text(good.read_text().replace(fake_kube.url, "http://127.0.0.1:9"))
    [unreachable] = asyncio.run(lifecycle.preflight(plan_of(), options(gone)))
    assert "cannot reach the API server at http://127.0.0.1:9" in unreachable.detail
    with pytest.raises(FleetError, match="no usable kubeconfig"):
        asyncio.run(lifecycle.preflight(plan_of(), options(tmp_path / "missing")))


def _in_thread(call, errors: list[BaseException] | None = None):
    """Run ``call`` (which enters its own event loop) in a thread, so the test can play the cluster meanwhile."""
    import threading

    def body() -> None:
        try:
            call()
        except BaseException as exc:
            if errors is None:
                raise
            errors.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def test_the_cli_preflight_and_up_speak_for_a_cluster(fake_kube: FakeKube, tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    ready_cluster(fake_kube)
    script_verify_job(fake_kube)
    kubeconfig = fake_kube.kubeconfig(tmp_path / "kubeconfig")
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.replace("REPLICAS", "1").replace("EXTRA", ""))
    cli = [sys.executable, "-m", "vllm_fleet.cli"]
    checked = subprocess.run([*cli, "preflight", str(spec), "--kubeconfig", str(kubeconfig)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "pass gpus: 1 replica(s) x 1 GPU fit" in checked.stdout and "warn namespace: namespace llm" in checked.stdout
    with fake_engine.running("--models", "qwen") as engine, fake_kube.run_controllers():
        fake_kube.forward_pods("127.0.0.1", {8000: engine.port})
        result = subprocess.run([*cli, "up", str(spec), "--kubeconfig", str(kubeconfig), "--json"],
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        verified = subprocess.run([*cli, "verify", str(spec), "--kubeconfig", str(kubeconfig), "--json"],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout)
    assert out["verified"] is True and out["endpoints"][0].startswith("pod/qwen-")
    assert verified.returncode == 0 and json.loads(verified.stdout)[0]["passed"], verified.stdout + verified.stderr
    assert {"kind": "Deployment", "action": "created"}.items() <= next(
        a for a in out["applied"] if a["kind"] == "Deployment"
    ).items()


def test_a_quota_without_room_for_the_gpus_fails_preflight(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    fake_kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
    quota = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "gpus", "namespace": NS},
             "spec": {"hard": {"requests.nvidia.com/gpu": "1", "requests.memory": "64Gi"}}}  # fmt: skip
    fake_kube.create(quota)

    def used(obj: dict) -> None:  # what the quota controller writes (pkg/controller/resourcequota)
        obj["status"] = {
            "hard": obj["spec"]["hard"],
            "used": {"requests.nvidia.com/gpu": "1", "requests.memory": "8Gi"},
        }

    fake_kube.update_as("resourcequota-controller", "v1", "ResourceQuota", "gpus", used, namespace=NS,
                        subresource="status")  # fmt: skip
    findings = asyncio.run(lifecycle.preflight(plan_of(), options(fake_kubeconfig)))
    quotas = {f.detail.split(":")[1].split()[0]: f for f in findings if f.check == "quota"}
    assert quotas["requests.nvidia.com/gpu"].severity == "fail"
    assert "has room for 0, the replicas request 1" in quotas["requests.nvidia.com/gpu"].detail
    assert "resources.gpus" in (quotas["requests.nvidia.com/gpu"].fix or "")
    assert quotas["requests.memory"].severity == "pass"


def test_an_old_server_and_a_missing_permission_fail_preflight_with_the_fix(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    with_sidecar = SPEC.replace("prefetch: false", "prefetch: true")
    fake_kube.version = "1.28"
    [api] = asyncio.run(lifecycle.preflight(plan_of(spec=with_sidecar), options(fake_kubeconfig)))
    assert api.severity == "fail" and "native sidecar, which needs 1.29+" in api.detail
    assert "storage.prefetch: false" in (api.fix or "")
    fake_kube.version = "1.30"
    fake_kube.deny("delete", "apps", "deployments", NS)
    findings = asyncio.run(lifecycle.preflight(plan_of(), options(fake_kubeconfig)))
    [permissions] = [f for f in findings if f.check == "permissions"]
    assert permissions.severity == "fail" and "delete deployments.apps in llm" in permissions.detail


def test_status_says_what_is_wrong_with_a_pod(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    fake_kube.script(CrashLoop(exit_code=137, reason="OOMKilled"), container="vllm")
    with fake_kube.run_controllers(), pytest.raises(TargetError, match="OOMKilled"):
        up(plan_of(), fake_kubeconfig, timeout_s=60)
    rows = asyncio.run(lifecycle.status(plan_of(), options(fake_kubeconfig)))
    [row] = [s for s in rows if s.replica.role == "engine"]
    assert not row.healthy and "OOMKilled" in row.state and "resources.memory" in row.state


def test_an_slo_missed_inside_the_cluster_fails_verify_though_the_forward_passed(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    script_verify_job(fake_kube, ok=False, p95_s=7.2)
    with fake_engine.running("--models", "qwen") as engine, fake_kube.run_controllers():
        fake_kube.forward_pods("127.0.0.1", {8000: engine.port})
        outcome = up(plan_of(), fake_kubeconfig, verify=True)
    [report] = outcome.reports
    assert not outcome.verified and report.failed_check == "slo"
    assert "p95 7.200 s > SLO 3.0 s" in report.checks[-1].detail and "inside the cluster" in report.checks[-1].detail
