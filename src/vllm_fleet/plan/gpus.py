"""The one table of GPU types (memory, and the node labels each platform uses) and the memory fit estimate.

Keys are GKE accelerator names, the names ``resources.gpu_type`` uses.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_fleet.errors import SpecError
from vllm_fleet.plan.derived import Derived
from vllm_fleet.plan.model import local_config, shape_from_config
from vllm_fleet.spec import FleetSpec


@dataclass(frozen=True)
class GpuType:
    """One GPU type: its memory and how nodes that carry it are labelled."""

    memory_gib: int
    gfd_product: str | None = None  # nvidia.com/gpu.product, as NVIDIA GPU feature discovery writes it
    do_model: str | None = None  # doks.digitalocean.com/gpu-model on DigitalOcean


GPU_TYPES: dict[str, GpuType] = {
    "nvidia-tesla-t4": GpuType(16, "Tesla-T4"),
    "nvidia-tesla-v100": GpuType(16),
    "nvidia-l4": GpuType(24, "NVIDIA-L4"),
    "nvidia-tesla-a100": GpuType(40, "NVIDIA-A100-SXM4-40GB"),
    "nvidia-a100-80gb": GpuType(80, "NVIDIA-A100-SXM4-80GB"),
    "nvidia-h100-80gb": GpuType(80, "NVIDIA-H100-80GB-HBM3", "h100"),
    "nvidia-h100-mega-80gb": GpuType(80),
    "nvidia-h200-141gb": GpuType(141, "NVIDIA-H200", "h200"),
    "nvidia-l40s": GpuType(48, "NVIDIA-L40S", "l40s"),
    "nvidia-b200": GpuType(180),
}
# Below this share of usable GPU memory left over, vLLM's activations and CUDA graphs may not fit: warn.
GPU_FIT_HEADROOM = 0.1
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def gpu_fit(spec: FleetSpec, source: str, model_bytes: int | None) -> dict[str, Derived]:
    """GPU memory fit: weights (params x dtype bytes) + KV cache (max_model_len x max_num_seqs) vs usable memory.

    Raises SpecError when it cannot fit: better now than after a 10-minute wait for an OOM.
    """
    res, eng = spec.resources, spec.engine
    if res.gpus == 0 or res.gpu_type not in GPU_TYPES:
        return {}
    config = local_config(source)
    dtype = eng.dtype if eng.dtype != "auto" else str(config.get("torch_dtype", "bfloat16"))
    width = _DTYPE_BYTES.get(dtype, 2)
    if spec.model.parameters_b:
        weights, wwhy = spec.model.parameters_b * 1e9 * width, f"{spec.model.parameters_b} B params x {width} B"
    elif model_bytes:
        weights, wwhy = float(model_bytes), "size of the weight files"
    else:
        return {"gpu_fit": Derived(None, "not checked: set model.parameters_b or model.size_gb")}
    shape = spec.model.shape or shape_from_config(config)
    if shape is None:
        return {"gpu_fit": Derived(None, "not checked: set model.shape (layers, kv_heads, head_dim)")}
    tokens = eng.max_model_len * eng.max_num_seqs
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * width * tokens
    usable = GPU_TYPES[res.gpu_type].memory_gib * 2**30 * res.gpus * res.nodes * eng.gpu_memory_utilization
    need = weights + kv
    nodes = f" x {res.nodes} nodes" if res.nodes > 1 else ""
    why = (
        f"weights {weights / 2**30:.1f} GiB ({wwhy}) + KV cache {kv / 2**30:.1f} GiB "
        f"(2 x {shape.layers} layers x {shape.kv_heads} kv heads x {shape.head_dim} x {width} B x "
        f"{eng.max_model_len} max_model_len x {eng.max_num_seqs} max_num_seqs) vs {usable / 2**30:.1f} GiB usable "
        f"({res.gpus} x {res.gpu_type}{nodes} {GPU_TYPES[res.gpu_type].memory_gib} GiB x "
        f"{eng.gpu_memory_utilization})"
    )
    if need > usable:
        raise SpecError(
            f"the model does not fit the GPU memory: {why}",
            fix="lower engine.max_model_len or engine.max_num_seqs, raise resources.gpus "
            "(and engine.tensor_parallel_size), or pick a larger resources.gpu_type",
        )
    return {"gpu_memory_need_gib": Derived(round(need / 2**30, 1), why),
            "gpu_fit": Derived(round(need / usable, 2), "share of usable GPU memory the estimate needs")}  # fmt: skip
