"""What the Kubernetes lifecycle tests share: the spec, a cluster with GPU nodes, and `up` through the core flow."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.servers.fake_kube.fake import FakeKube
from vllm_fleet.ops import lifecycle
from vllm_fleet.plan import Plan, resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.base import Reporter, TargetOptions

NS = "llm"
SPEC = """\
name: qwen
model: {source: "gs://models/qwen", served_name: qwen, size_gb: 1}
target: kubernetes
replicas: REPLICAS
resources: {gpus: 1, gpu_type: nvidia-l4, cpu: "2", memory: 8Gi}
storage: {profile: pvc-init, size: 20Gi, storage_class: fast-ssd, prefetch: false}
kubernetes: {namespace: llm, platform: gke, image: "registry.example/vllm-fleet:1.0"EXTRA}
monitoring: {scraper: none, dashboard: false}
"""
GKE_L4 = {"cloud.google.com/gke-accelerator": "nvidia-l4"}
GPU_TAINT = ({"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},)


class Lines(Reporter):
    """A Reporter that keeps the lines `up` says (the live table is not needed here)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)


def plan_of(replicas: int = 1, extra: str = "", spec: str = SPEC) -> Plan:
    return resolve(parse_spec(spec.replace("REPLICAS", str(replicas)).replace("EXTRA", extra)))


def options(kubeconfig: Path, **more: object) -> TargetOptions:
    return TargetOptions(kubeconfig=str(kubeconfig), **more)  # type: ignore[arg-type]


def ready_cluster(kube: FakeKube, gpu_nodes: int = 1) -> None:
    """A CPU node, GPU nodes as GKE labels and taints them, and the claim's StorageClass."""
    kube.add_node("cpu-0")  # where the pods that need no GPU run (the verify Job's)
    for i in range(gpu_nodes):
        kube.add_node(f"gpu-{i}", labels=GKE_L4, gpus=1, taints=GPU_TAINT)
    kube.add_storage_class("fast-ssd", binding_mode="WaitForFirstConsumer")


def up(
    plan: Plan, kubeconfig: Path, report: Reporter | None = None, *, verify: bool = False, **more: object
) -> lifecycle.UpOutcome:
    """`up` through the core flow; verify only when asked (it needs a server behind the fake's port-forward)."""
    return asyncio.run(lifecycle.up(plan, report or Lines(), verify=verify, options=options(kubeconfig, **more)))


def kinds(kube: FakeKube, api_version: str, kind: str) -> list[str]:
    return sorted(o["metadata"]["name"] for o in kube.objects(api_version, kind, NS))


def script_verify_job(kube: FakeKube, *, ok: bool = True, p95_s: float = 0.4) -> None:
    """The in-cluster verify Job's run, scripted: its container prints what `vllm-fleet verify --json` prints."""
    from tests.servers.fake_kube.kubelet import Exit

    verdict = "<=" if ok else ">"
    checks = [{"name": n, "ok": True, "detail": "ok", "seconds": 0.01} for n in ("health", "models", "chat", "stream")]
    detail = f"p95 {p95_s:.3f} s {verdict} SLO 3.0 s; 20 requests one after another (sequential, unloaded)"
    checks.append({"name": "slo", "ok": ok, "seconds": 2.0, "detail": detail})
    report = [{"url": "http://qwen.llm.svc:8000", "model": "qwen", "checks": checks, "passed": ok}]
    kube.script(Exit(code=0 if ok else 1, logs=json.dumps(report)), container="verify")
