"""Where GPU pods may run: node labels and tolerations per GPU platform.

    gke           cloud.google.com/gke-accelerator: <gpu_type>   (GKE's own accelerator label)
    digitalocean  doks.digitalocean.com/gpu-brand: nvidia (+ gpu-model when the type is known)
    generic       nvidia.com/gpu.product: <product>                (NVIDIA GPU feature discovery)

Every platform taints GPU nodes with nvidia.com/gpu (NoSchedule), so GPU pods tolerate it.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.plan.gpus import GPU_TYPES
from vllm_fleet.targets.kubernetes.manifests.objects import Obj


def gpu_node_selector(plan: Plan) -> dict[str, str]:
    """Labels a node must have to run one replica (empty for CPU-only replicas)."""
    k8s, res = plan.spec.kubernetes, plan.spec.resources
    if k8s.gpu_node_selector is not None:
        return dict(k8s.gpu_node_selector)
    if res.gpus == 0 or not res.gpu_type:
        return {}
    known = GPU_TYPES.get(res.gpu_type)
    if k8s.platform == "gke":
        return {"cloud.google.com/gke-accelerator": res.gpu_type}
    if k8s.platform == "digitalocean":
        out = {"doks.digitalocean.com/gpu-brand": "nvidia"}
        if known and known.do_model:
            out["doks.digitalocean.com/gpu-model"] = known.do_model
        return out
    return {"nvidia.com/gpu.product": known.gfd_product if known and known.gfd_product else res.gpu_type}


def gpu_tolerations(plan: Plan) -> list[Obj]:
    """Tolerate the GPU taint when the replica asks for GPUs."""
    if plan.spec.resources.gpus == 0:
        return []
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


# GKE labels a node whose pool has a secondary boot disk CONTAINER_IMAGE_CACHE (GKE docs, "Use secondary boot
# disks to preload data or container images"); Autopilot provisions such a node for a pod that selects it.
IMAGE_CACHE_LABEL = "cloud.google.com.node-restriction.kubernetes.io/gke-secondary-boot-disk-"


def image_cache_selector(plan: Plan) -> dict[str, str]:
    """The node label of a pool preloaded with the spec's image (kubernetes.image_cache_disk; empty when unset)."""
    disk = plan.spec.kubernetes.image_cache_disk
    if not disk:
        return {}
    project, name = disk.split("/")[1], disk.rsplit("/", 1)[-1]
    return {IMAGE_CACHE_LABEL + name: f"CONTAINER_IMAGE_CACHE.{project}"}
