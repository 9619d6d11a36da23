"""Warnings that do not stop a plan but usually mean a bad day in production."""

from __future__ import annotations

import re

from vllm_fleet.plan.derived import Derived
from vllm_fleet.plan.gpus import GPU_FIT_HEADROOM, GPU_TYPES
from vllm_fleet.spec import FleetSpec
from vllm_fleet.versions import VLLM_VERSION


def lint_spec(spec: FleetSpec, derived: dict[str, Derived]) -> tuple[str, ...]:
    """Warnings that do not stop a plan but usually mean a bad day in production (issue 4)."""
    out: list[str] = []
    if spec.resources.gpus and spec.resources.gpu_type not in GPU_TYPES:
        out.append(f"GPU memory fit not checked: unknown resources.gpu_type {spec.resources.gpu_type!r} "
                   f"(known: {', '.join(sorted(GPU_TYPES))})")  # fmt: skip
    fit = derived.get("gpu_fit")
    if fit is not None and fit.value is not None and float(fit.value) > 1 - GPU_FIT_HEADROOM:
        out.append(f"GPU memory is tight ({float(fit.value):.0%} of usable): activations and CUDA graphs may not fit; "
                   "lower engine.max_num_seqs or engine.max_model_len")  # fmt: skip
    if spec.target != "kubernetes":
        return tuple(out)
    most = int(derived["max_replicas"].value or 1)
    if most > 1 and not spec.availability.pod_disruption_budget:
        out.append(f"{most} replicas without a PodDisruptionBudget: set availability.pod_disruption_budget: true")
    if most > 1 and derived["access_mode"].value in ("ReadWriteOnce", "ReadWriteOncePod"):
        out.append(
            f"ReadWriteOnce cache with {most} replicas: pods scheduled on other nodes cannot mount it; "
            "use storage.profile nfs or pd-preloaded, or storage.access_mode ReadWriteMany"
        )
    if spec.resources.nodes > 1 and derived["access_mode"].value in ("ReadWriteOnce", "ReadWriteOncePod"):
        out.append(f"ReadWriteOnce cache for a replica on {spec.resources.nodes} nodes: its workers cannot mount "
                   "it; use storage.profile gcsfuse, nfs, pd-preloaded or local-nvme")  # fmt: skip
    expected = derived.get("expected_load_s")
    budget = int(derived["startup_budget_s"].value or 0)
    if expected is not None and budget < int(expected.value or 0):
        out.append(f"startup probe budget {budget} s is shorter than the expected load {expected.value} s: "
                   "raise kubernetes.startup_timeout_s or drop it")  # fmt: skip
    image = spec.kubernetes.image
    if "@sha256:" not in image and (":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")):
        out.append(f"image {image!r} is not pinned: use a version tag or a digest, never latest")
    if image.rsplit("/", 1)[-1].startswith("vllm-openai"):
        out.append(f"image {image!r} has no vllm-fleet in it: stage, prefetch and the drain hook need the image "
                   "built from this project's Dockerfile (FROM that image)")  # fmt: skip
    tagged = re.search(r"-vllm([0-9][0-9.]*[0-9])$", image)
    if tagged and tagged.group(1) != VLLM_VERSION:
        out.append(f"image {image!r} runs vLLM {tagged.group(1)}, the flags and metric names here are checked "
                   f"against vLLM {VLLM_VERSION}: rebuild the Dockerfile's image (BASE v{VLLM_VERSION})")  # fmt: skip
    if spec.gateway.enabled and not spec.kubernetes.allowed_cidrs:
        out.append("gateway.enabled but kubernetes.allowed_cidrs is empty: the NetworkPolicy keeps the load "
                   "balancer's proxies out; add their range (GKE: the region's proxy-only subnet)")  # fmt: skip
    return tuple(out)
