"""Plan -> the list of Kubernetes manifests (plain dicts) -> YAML, kubectl- and kustomize-ready.

The renderer reads the Plan and never re-derives: the vLLM argv is
``engine.vllm_args`` (as for the local target), probe budgets and the grace
period are ``plan.derived``. Same Plan, byte-identical YAML.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests import alerts, inference, lws, monitoring, network, router, scaling
from vllm_fleet.targets.kubernetes.manifests.objects import Obj
from vllm_fleet.targets.kubernetes.manifests.storage import storage_parts
from vllm_fleet.targets.kubernetes.manifests.workload import deployment


def render(plan: Plan) -> list[Obj]:
    """Every manifest for ``plan``, in apply order (identity and storage before the workload)."""
    spec = plan.spec
    parts = storage_parts(plan)
    workload = lws.leader_worker_set(plan, parts) if spec.resources.nodes > 1 else deployment(plan, parts)
    objects = [network.service_account(plan), *parts.objects, workload, network.service(plan)]
    if spec.availability.pod_disruption_budget and int(plan.derived["max_replicas"].value or 1) > 1:
        objects.append(network.disruption_budget(plan))
    objects.append(network.network_policy(plan))
    if spec.router.enabled:  # the router adds objects; without it the output is what it was before the router
        objects += router.manifests(plan)
    objects += scaling.autoscaler(plan)
    if network.inference_pool_mode(plan):  # the pool and its endpoint picker, which the HTTPRoute sends to
        objects += inference.manifests(plan)
    if spec.gateway.enabled:
        objects += network.gateway(plan)
    objects += monitoring.scraper(plan)
    if spec.router.enabled:
        objects += monitoring.router_scraper(plan)
    objects += alerts.rules(plan)
    if spec.monitoring.dashboard:
        objects.append(monitoring.dashboard(plan))
    return objects


class _Dumper(yaml.SafeDumper):
    """Block style for multi-line strings (the dashboard JSON), plain otherwise."""

    def ignore_aliases(self, data: object) -> bool:
        return True  # shared dicts (mounts, labels) are written out in full: kubectl needs no anchors


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(objects: list[Obj]) -> str:
    """One multi-document YAML stream."""
    return "".join("---\n" + dump(obj) for obj in objects)


def dump(obj: Obj) -> str:
    return yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096)


def file_name(index: int, obj: Obj) -> str:
    return f"{index:02d}-{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"


def write_dir(objects: list[Obj], out: Path) -> list[Path]:
    """One file per object plus a kustomization.yaml listing them; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, obj in enumerate(objects):
        path = out / file_name(i, obj)
        path.write_text(dump(obj))
        written.append(path)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [p.name for p in written],
    }
    (out / "kustomization.yaml").write_text(dump(kustomization))
    return [*written, out / "kustomization.yaml"]
