"""`doctor`: live through the cluster and from a dump, the engine's own error as the primary cause."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.kubernetes.scenario import NS, options, plan_of, ready_cluster, up
from tests.servers.fake_kube import fixture
from tests.servers.fake_kube.fake import FakeKube
from tests.servers.fake_kube.kubelet import CrashLoop
from vllm_fleet.errors import SpecError, TargetError
from vllm_fleet.ops import lifecycle

pytestmark = pytest.mark.integration
fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig

NO_DEVICE = (
    "(EngineCore_DP0 pid=212) ERROR 12-01 10:00:05 [core.py:708] EngineCore failed to start.\n"
    "Traceback (most recent call last):\n"
    '  File "/usr/local/lib/python3.12/dist-packages/vllm/config/device.py", line 60, in __post_init__\n'
    "RuntimeError: Failed to infer device type\n"
)


def _crashing(kube: FakeKube) -> None:
    ready_cluster(kube)
    kube.script(CrashLoop(exit_code=1, logs=NO_DEVICE), container="vllm")


def test_up_fails_with_the_engines_own_reason_and_doctor_names_it_primary(
    fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    _crashing(fake_kube)
    with fake_kube.run_controllers():
        with pytest.raises(TargetError, match="CrashLoopBackOff") as err:
            up(plan_of(), fake_kubeconfig, timeout_s=60)
        found = asyncio.run(lifecycle.doctor(plan_of(), options(fake_kubeconfig)))
    assert "Failed to infer device type" in (err.value.details or "")
    primary, *rest = found
    assert primary.primary and "Failed to infer device type" in primary.evidence and not primary.retryable
    assert "resources.gpus" in primary.fix or "kubernetes.image" in primary.fix
    assert any(d.cause.startswith("CrashLoopBackOff") and not d.primary for d in rest)


def _write_dump(kube: FakeKube, directory: Path) -> None:
    """What the README's kubectl line writes: Lists per kind, and each container's logs."""
    (directory / "logs").mkdir(parents=True)
    kinds = (
        ("pods", "v1", "Pod"),
        ("events", "v1", "Event"),
        ("pvc", "v1", "PersistentVolumeClaim"),
        ("deployments", "apps/v1", "Deployment"),
    )
    for name, api_version, kind in kinds:
        items = kube.objects(api_version, kind, NS)
        (directory / f"{name}.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    for pod in kube.objects("v1", "Pod", NS):
        (directory / "logs" / f"{pod['metadata']['name']}_vllm.previous.log").write_text(NO_DEVICE)


def test_doctor_from_a_dump_finds_the_same_cause_and_the_cli_exits_1(fake_kube: FakeKube, tmp_path: Path) -> None:
    _crashing(fake_kube)
    kubeconfig = fake_kube.kubeconfig(tmp_path / "kubeconfig")
    with fake_kube.run_controllers(), pytest.raises(TargetError):
        up(plan_of(), kubeconfig, timeout_s=60)
    _write_dump(fake_kube, tmp_path / "dump")
    found = lifecycle.doctor_from(tmp_path / "dump")
    assert found[0].primary and "Failed to infer device type" in found[0].evidence
    cli = subprocess.run([sys.executable, "-m", "vllm_fleet.cli", "doctor", "--from", str(tmp_path / "dump"), "--json"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == 1, cli.stderr
    assert json.loads(cli.stdout)[0]["evidence"] == found[0].evidence


def test_doctor_of_a_healthy_deployment_finds_nothing(fake_kube: FakeKube, fake_kubeconfig: Path) -> None:
    ready_cluster(fake_kube)
    with fake_kube.run_controllers():
        up(plan_of(), fake_kubeconfig)
        assert asyncio.run(lifecycle.doctor(plan_of(), options(fake_kubeconfig))) == []


def test_doctor_from_a_file_that_is_not_a_list_says_which(tmp_path: Path) -> None:
    (tmp_path / "pods.json").write_text('{"kind": "Pod"}')
    with pytest.raises(SpecError, match=r"pods.json: not a List"):
        lifecycle.doctor_from(tmp_path)
