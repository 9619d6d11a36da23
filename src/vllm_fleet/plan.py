"""Plan: the spec resolved. Every derived number is computed here, once.

Targets read a Plan and never re-derive: paths, ports, probe budgets, grace
periods. Each derived number carries the reason it has its value, so
``vllm-fleet plan`` can show its work.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_fleet.errors import SpecError
from vllm_fleet.spec import FleetSpec, ModelShape, load_spec
from vllm_fleet.weights.sources import file_path

# A cloud persistent disk (pd-balanced) reads at about 240 MB/s per volume: the
# assumption for the startup budget until probe-storage measures the real one.
ASSUMED_READ_BANDWIDTH_BPS = 240e6
# Time vLLM spends before and after reading weights (imports, profiling, KV cache).
ENGINE_INIT_S = 90
DRAIN_BUFFER_S = 30
# Kubernetes startup probe period; the failure threshold is the budget divided by it.
STARTUP_PROBE_PERIOD_S = 10
# GPU memory by type (GKE accelerator names, the names resources.gpu_type uses), for the fit estimate.
GPU_MEMORY_GIB = {
    "nvidia-tesla-t4": 16, "nvidia-tesla-v100": 16, "nvidia-l4": 24, "nvidia-tesla-a100": 40,
    "nvidia-a100-80gb": 80, "nvidia-h100-80gb": 80, "nvidia-h100-mega-80gb": 80, "nvidia-h200-141gb": 141,
    "nvidia-l40s": 48, "nvidia-b200": 180,
}  # fmt: skip
# Below this share of usable GPU memory left over, vLLM's activations and CUDA graphs may not fit: warn.
GPU_FIT_HEADROOM = 0.1
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class Derived:
    """A number the Plan computed, and why it has that value."""

    value: float | int | str | None
    why: str


@dataclass(frozen=True)
class Plan:
    """A FleetSpec resolved for one environment: what targets execute."""

    spec: FleetSpec
    env: str | None
    spec_dir: Path
    source: str
    cache_root: Path
    model_dir: Path
    run_dir: Path
    ports: tuple[int, ...]
    model_bytes: int | None
    derived: dict[str, Derived] = field(default_factory=dict)
    lint: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def served_name(self) -> str:
        return self.spec.model.served_name or self.spec.name

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.spec.local.host}:{port}" for port in self.ports]

    @property
    def startup_budget_s(self) -> int:
        return int(self.derived["startup_budget_s"].value or 0)

    @property
    def termination_grace_s(self) -> int:
        return int(self.derived["termination_grace_s"].value or 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view of the Plan (what `vllm-fleet plan --json` prints)."""
        from vllm_fleet import engine

        return {
            "name": self.name,
            "env": self.env,
            "target": self.spec.target,
            "served_name": self.served_name,
            "source": self.source,
            "cache_root": str(self.cache_root),
            "model_dir": str(self.model_dir),
            "replicas": self.spec.replicas,
            "endpoints": self.endpoints if self.spec.target == "local" else [],
            "model_bytes": self.model_bytes,
            "engine_argv": engine.vllm_args(self, model_dir=str(self.model_dir), port=self.ports[0]),
            "engine_env": engine.vllm_env(self),
            "derived": {k: {"value": d.value, "why": d.why} for k, d in self.derived.items()},
            "lint": list(self.lint),
            "spec": self.spec.model_dump(exclude={"environments"}),
        }


def load_plan(spec_path: str | Path, env: str | None = None) -> Plan:
    """Load, validate and resolve the spec at ``spec_path`` for ``env``."""
    spec_path = Path(spec_path)
    return resolve(load_spec(spec_path, env), env=env, spec_dir=spec_path.resolve().parent)


def resolve(spec: FleetSpec, env: str | None = None, spec_dir: Path | None = None) -> Plan:
    """Resolve ``spec``; relative paths in it are relative to ``spec_dir``."""
    spec_dir = spec_dir or Path.cwd()
    source = _absolute_source(spec.model.source, spec_dir)
    cache_root = (spec_dir / spec.cache.dir).resolve()
    model_dir = cache_root / "models" / model_key(source, spec.model.revision)
    model_bytes = _model_bytes(spec, source)
    ports = tuple(spec.local.base_port + i for i in range(spec.replicas))
    derived = _derive(spec, model_bytes)
    derived |= _derive_kubernetes(spec, source, derived)
    derived |= _gpu_fit(spec, source, model_bytes)
    return Plan(
        spec=spec,
        env=env,
        spec_dir=spec_dir,
        source=source,
        cache_root=cache_root,
        model_dir=model_dir,
        run_dir=cache_root / "run" / spec.name,
        ports=ports,
        model_bytes=model_bytes,
        derived=derived,
        lint=_lint(spec, model_bytes, derived),
    )


def model_key(source: str, revision: str | None = None) -> str:
    """Cache directory name for a source: readable tail plus a hash of the full URI."""
    ident = f"{source}@{revision or ''}"
    tail = re.sub(r"[^a-zA-Z0-9._-]+", "-", source.rstrip("/").rsplit("/", 1)[-1]).strip("-") or "model"
    return f"{tail[:40]}-{hashlib.sha256(ident.encode()).hexdigest()[:10]}"


def _absolute_source(source: str, spec_dir: Path) -> str:
    if "://" not in source:
        return (spec_dir / source).resolve().as_uri()
    scheme, rest = source.split("://", 1)
    if scheme == "file" and not rest.startswith("/"):
        return (spec_dir / rest).resolve().as_uri()
    return source


def _model_bytes(spec: FleetSpec, source: str) -> int | None:
    if source.startswith("file://"):
        root = file_path(source)
        if root.is_dir():
            return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    if spec.model.size_gb:
        return int(spec.model.size_gb * 1e9)
    return None


def _derive(spec: FleetSpec, model_bytes: int | None) -> dict[str, Derived]:
    derived: dict[str, Derived] = {}
    measured = spec.storage.read_bandwidth_mb_s
    bandwidth = measured * 1e6 if measured else ASSUMED_READ_BANDWIDTH_BPS
    if model_bytes:
        load_s = model_bytes / bandwidth
        budget = math.ceil((ENGINE_INIT_S + load_s) * 1.5)
        why = (
            f"1.5 x ({ENGINE_INIT_S} s engine init + {model_bytes / 1e9:.2f} GB / "
            f"{bandwidth / 1e6:.0f} MB/s {'storage.read_bandwidth_mb_s' if measured else 'assumed read bandwidth'})"
        )
        derived["expected_load_s"] = Derived(math.ceil(ENGINE_INIT_S + load_s), "engine init + size / bandwidth")
    else:
        budget = math.ceil(ENGINE_INIT_S * 1.5) + 600
        why = "model size unknown (set model.size_gb): engine init + a 10 min allowance"
    derived["startup_budget_s"] = Derived(budget, why)
    grace = spec.availability.drain_timeout_s + DRAIN_BUFFER_S
    derived["termination_grace_s"] = Derived(
        grace, f"availability.drain_timeout_s {spec.availability.drain_timeout_s} s + {DRAIN_BUFFER_S} s buffer"
    )
    return derived


def _derive_kubernetes(spec: FleetSpec, source: str, derived: dict[str, Derived]) -> dict[str, Derived]:
    """Numbers and paths only the Kubernetes target reads (issue 4)."""
    st = spec.storage
    out: dict[str, Derived] = {}
    budget = int(derived["startup_budget_s"].value or 0)
    if spec.kubernetes.startup_timeout_s:
        budget = spec.kubernetes.startup_timeout_s
        out["startup_budget_s"] = Derived(budget, "kubernetes.startup_timeout_s (set in the spec)")
    out["startup_failure_threshold"] = Derived(
        math.ceil(budget / STARTUP_PROBE_PERIOD_S),
        f"startup budget {budget} s / {STARTUP_PROBE_PERIOD_S} s probe period",
    )
    if st.profile == "gcsfuse":
        out["pod_model_dir"] = Derived(st.mount_path, "gcsfuse mounts the model's bucket prefix (only-dir) here")
    else:
        key = model_key(source, spec.model.revision)
        out["pod_model_dir"] = Derived(f"{st.mount_path}/models/{key}", "storage.mount_path + cache layout models/KEY")
    default_mode = {"pd-preloaded": "ReadOnlyMany", "nfs": "ReadWriteMany", "gcsfuse": "ReadOnlyMany",
                    "local-nvme": "node-local"}  # fmt: skip
    mode = st.access_mode or default_mode.get(st.profile, "ReadWriteOnce")
    out["access_mode"] = Derived(mode, "storage.access_mode" if st.access_mode else f"default of {st.profile}")
    out["max_replicas"] = Derived(
        max(spec.replicas, spec.scaling.max_replicas) if spec.scaling.mode != "none" else spec.replicas,
        "replicas, or scaling.max_replicas when autoscaling",
    )
    return out


def _gpu_fit(spec: FleetSpec, source: str, model_bytes: int | None) -> dict[str, Derived]:
    """GPU memory fit: weights (params x dtype bytes) + KV cache (max_model_len x max_num_seqs) vs usable memory.

    Raises SpecError when it cannot fit: better now than after a 10-minute wait for an OOM.
    """
    res, eng = spec.resources, spec.engine
    if res.gpus == 0 or res.gpu_type not in GPU_MEMORY_GIB:
        return {}
    config = _local_config(source)
    dtype = eng.dtype if eng.dtype != "auto" else str(config.get("torch_dtype", "bfloat16"))
    width = _DTYPE_BYTES.get(dtype, 2)
    if spec.model.parameters_b:
        weights, wwhy = spec.model.parameters_b * 1e9 * width, f"{spec.model.parameters_b} B params x {width} B"
    elif model_bytes:
        weights, wwhy = float(model_bytes), "size of the weight files"
    else:
        return {"gpu_fit": Derived(None, "not checked: set model.parameters_b or model.size_gb")}
    shape = spec.model.shape or _shape_from_config(config)
    if shape is None:
        return {"gpu_fit": Derived(None, "not checked: set model.shape (layers, kv_heads, head_dim)")}
    tokens = eng.max_model_len * eng.max_num_seqs
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * width * tokens
    usable = GPU_MEMORY_GIB[res.gpu_type] * 2**30 * res.gpus * eng.gpu_memory_utilization
    need = weights + kv
    why = (
        f"weights {weights / 2**30:.1f} GiB ({wwhy}) + KV cache {kv / 2**30:.1f} GiB "
        f"(2 x {shape.layers} layers x {shape.kv_heads} kv heads x {shape.head_dim} x {width} B x "
        f"{eng.max_model_len} max_model_len x {eng.max_num_seqs} max_num_seqs) vs {usable / 2**30:.1f} GiB usable "
        f"({res.gpus} x {res.gpu_type} {GPU_MEMORY_GIB[res.gpu_type]} GiB x {eng.gpu_memory_utilization})"
    )
    if need > usable:
        raise SpecError(
            f"the model does not fit the GPU memory: {why}",
            fix="lower engine.max_model_len or engine.max_num_seqs, raise resources.gpus "
            "(and engine.tensor_parallel_size), or pick a larger resources.gpu_type",
        )
    return {"gpu_memory_need_gib": Derived(round(need / 2**30, 1), why),
            "gpu_fit": Derived(round(need / usable, 2), "share of usable GPU memory the estimate needs")}  # fmt: skip


def _local_config(source: str) -> dict[str, Any]:
    path = file_path(source) / "config.json"
    if not source.startswith("file://") or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _shape_from_config(config: dict[str, Any]) -> ModelShape | None:
    try:
        heads = int(config["num_attention_heads"])
        return ModelShape(
            layers=int(config["num_hidden_layers"]),
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or int(config["hidden_size"]) // heads),
        )
    except (KeyError, TypeError, ValueError):
        return None


def _lint(spec: FleetSpec, model_bytes: int | None, derived: dict[str, Derived]) -> tuple[str, ...]:
    """Warnings that do not stop a plan but usually mean a bad day in production (issue 4)."""
    out: list[str] = []
    if spec.resources.gpus and spec.resources.gpu_type not in GPU_MEMORY_GIB:
        out.append(f"GPU memory fit not checked: unknown resources.gpu_type {spec.resources.gpu_type!r} "
                   f"(known: {', '.join(sorted(GPU_MEMORY_GIB))})")  # fmt: skip
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
    if spec.gateway.enabled and not spec.kubernetes.allowed_cidrs:
        out.append("gateway.enabled but kubernetes.allowed_cidrs is empty: the NetworkPolicy keeps the load "
                   "balancer's proxies out; add their range (GKE: the region's proxy-only subnet)")  # fmt: skip
    return tuple(out)
