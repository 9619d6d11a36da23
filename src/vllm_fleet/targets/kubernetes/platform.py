"""Where GPU pods may run: node labels and tolerations per GPU platform.

    gke           cloud.google.com/gke-accelerator: <gpu_type>   (GKE's own accelerator label)
    digitalocean  doks.digitalocean.com/gpu-brand: nvidia (+ gpu-model when the type is known)
    generic       nvidia.com/gpu.product: <product>                (NVIDIA GPU feature discovery)

Every platform taints GPU nodes with nvidia.com/gpu (NoSchedule), so GPU pods tolerate it.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.objects import Obj

# resources.gpu_type (GKE names) -> the product string NVIDIA GPU feature discovery puts on nodes.
GFD_PRODUCT = {
    "nvidia-tesla-t4": "Tesla-T4",
    "nvidia-l4": "NVIDIA-L4",
    "nvidia-tesla-a100": "NVIDIA-A100-SXM4-40GB",
    "nvidia-a100-80gb": "NVIDIA-A100-SXM4-80GB",
    "nvidia-h100-80gb": "NVIDIA-H100-80GB-HBM3",
    "nvidia-h200-141gb": "NVIDIA-H200",
    "nvidia-l40s": "NVIDIA-L40S",
}
# resources.gpu_type -> DigitalOcean's doks.digitalocean.com/gpu-model value.
DO_MODEL = {"nvidia-h100-80gb": "h100", "nvidia-h200-141gb": "h200", "nvidia-l40s": "l40s"}


def gpu_node_selector(plan: Plan) -> dict[str, str]:
    """Labels a node must have to run one replica (empty for CPU-only replicas)."""
    k8s, res = plan.spec.kubernetes, plan.spec.resources
    if k8s.gpu_node_selector is not None:
        return dict(k8s.gpu_node_selector)
    if res.gpus == 0 or not res.gpu_type:
        return {}
    if k8s.platform == "gke":
        return {"cloud.google.com/gke-accelerator": res.gpu_type}
    if k8s.platform == "digitalocean":
        out = {"doks.digitalocean.com/gpu-brand": "nvidia"}
        if res.gpu_type in DO_MODEL:
            out["doks.digitalocean.com/gpu-model"] = DO_MODEL[res.gpu_type]
        return out
    return {"nvidia.com/gpu.product": GFD_PRODUCT.get(res.gpu_type, res.gpu_type)}


def gpu_tolerations(plan: Plan) -> list[Obj]:
    """Tolerate the GPU taint when the replica asks for GPUs."""
    if plan.spec.resources.gpus == 0:
        return []
    return [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
