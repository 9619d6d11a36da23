"""The lifecycle against a real cluster, when VLLM_FLEET_TEST_KUBECONFIG names one (kind, k3d, a cloud cluster).

Read-only by default: preflight of a CPU-only spec (API, version, permissions, storage, dry run) must not
fail on the API check. With VLLM_FLEET_TEST_IMAGE set too (an image built from the Dockerfile that the
cluster can pull), `up` then `down` run for real. Without the variable the tests are skipped and say why;
the scenarios that script the cluster's behaviour (stockouts, crash loops) need the fake (test_lifecycle.py).
"""

from __future__ import annotations

import asyncio
import os

import pytest

from vllm_fleet.ops import lifecycle
from vllm_fleet.plan import resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.base import TargetOptions

pytestmark = pytest.mark.integration
# Read at import: the suite's autouse fixture clears VLLM_FLEET_* from the environment of each test.
KUBECONFIG = os.environ.get("VLLM_FLEET_TEST_KUBECONFIG")
IMAGE = os.environ.get("VLLM_FLEET_TEST_IMAGE")
needs_cluster = pytest.mark.skipif(not KUBECONFIG, reason="no real cluster: set VLLM_FLEET_TEST_KUBECONFIG to run")

SPEC = """\
name: vllm-fleet-e2e
model: {source: "https://example.invalid/model/", served_name: tiny, size_gb: 0.3}
target: kubernetes
resources: {gpus: 0, cpu: "2", memory: 4Gi}
storage: {profile: pvc-init, size: 2Gi, prefetch: false}
kubernetes: {namespace: vllm-fleet-e2e, image: "IMAGE"}
monitoring: {scraper: none, dashboard: false}
"""


def _plan():
    return resolve(parse_spec(SPEC.replace("IMAGE", IMAGE or "registry.example/vllm-fleet:test")))


@needs_cluster
def test_preflight_reaches_the_real_api_server() -> None:
    findings = asyncio.run(lifecycle.preflight(_plan(), TargetOptions(kubeconfig=KUBECONFIG)))
    api = next(f for f in findings if f.check == "api")
    assert api.severity == "pass", api


@needs_cluster
@pytest.mark.skipif(not IMAGE, reason="set VLLM_FLEET_TEST_IMAGE (an image the cluster can pull) to run up/down")
def test_up_then_down_on_the_real_cluster() -> None:
    plan, options = _plan(), TargetOptions(kubeconfig=KUBECONFIG, timeout_s=900)
    try:
        outcome = asyncio.run(lifecycle.up(plan, verify=False, options=options))
        assert outcome.started.replicas
    finally:
        asyncio.run(lifecycle.down(plan, purge=True, options=options))
