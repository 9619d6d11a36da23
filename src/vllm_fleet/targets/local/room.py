"""Room for one more replica: does a local rolling restart surge (1) or drain first (0)?

``local.surge: auto`` decides from memory. A replacement started beside its old replica holds its own
KV cache (vLLM's CPU build allocates ``VLLM_CPU_KVCACHE_SPACE`` GiB up front), its own copy of the
weights (their bytes on disk) and its processes (Python, torch, the API server and EngineCore:
``PROCESS_ALLOWANCE_BYTES``, an allowance, not a measurement). When /proc/meminfo's MemAvailable holds
all of that, surge 1; else 0: each replica is drained and stopped before its replacement starts, the
rule the Kubernetes Deployment follows (maxSurge 0, maxUnavailable 1). On a GPU the engines' memory
is the GPU's (each takes ``engine.gpu_memory_utilization`` of it), so auto drains first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vllm_fleet import engine
from vllm_fleet.plan import Plan

GIB = 1 << 30
PROCESS_ALLOWANCE_BYTES = 2 * GIB
MEMINFO = Path("/proc/meminfo")


@dataclass(frozen=True)
class SurgeChoice:
    """How many extra replicas a rolling restart runs, and why (the report's line)."""

    surge: Literal[0, 1]
    why: str


def choose_surge(
    setting: Literal["auto", 0, 1], *, available: int | None, kv_cache: int, weights: int, gpus: int = 0
) -> SurgeChoice:
    """``local.surge`` resolved: the setting itself, or (auto) 1 when ``available`` bytes hold one more replica."""
    if setting != "auto":
        return SurgeChoice(setting, f"local.surge: {setting}")
    if gpus:
        return SurgeChoice(0, "auto: the replicas hold GPU memory (engine.gpu_memory_utilization), none is spare")
    need = kv_cache + weights + PROCESS_ALLOWANCE_BYTES
    parts = f"{_gib(kv_cache)} KV cache + {_gib(weights)} weights + {_gib(PROCESS_ALLOWANCE_BYTES)} processes"
    if available is None:
        return SurgeChoice(1, f"auto: MemAvailable unreadable, one more replica ({_gib(need)}: {parts}) assumed to fit")
    fits = available >= need
    verdict = "room for one more" if fits else "no room for one more, drain first"
    return SurgeChoice(1 if fits else 0, f"auto: {verdict}: MemAvailable {_gib(available)}, one replica {_gib(need)} "
                       f"({parts})")  # fmt: skip


def mem_available(meminfo: str) -> int | None:
    """MemAvailable in bytes from /proc/meminfo's text; None when it has no such line."""
    for line in meminfo.splitlines():
        name, _, rest = line.partition(":")
        if name == "MemAvailable" and rest.split():
            return int(rest.split()[0]) * 1024  # the kernel writes kB (KiB)
    return None


def decide(plan: Plan) -> SurgeChoice:
    """The surge of a rolling restart of ``plan`` on this machine, now."""
    try:
        available = mem_available(MEMINFO.read_text())
    except OSError:
        available = None
    return choose_surge(
        plan.spec.local.surge,
        available=available,
        kv_cache=kv_cache_bytes(plan),
        weights=weight_bytes(plan),
        gpus=plan.spec.resources.gpus,
    )


def kv_cache_bytes(plan: Plan) -> int:
    """The KV cache one CPU replica allocates: VLLM_CPU_KVCACHE_SPACE GiB as the engine gets it (engine.env may
    set it over engine.kv_cache_space_gib)."""
    space = engine.vllm_env(plan.spec).get("VLLM_CPU_KVCACHE_SPACE", str(plan.spec.engine.kv_cache_space_gib))
    try:
        return int(float(space) * GIB)
    except ValueError:
        return plan.spec.engine.kv_cache_space_gib * GIB


def weight_bytes(plan: Plan) -> int:
    """The staged model's bytes on disk (what each replica reads into its memory)."""
    if plan.model_dir.is_dir():
        return sum(f.stat().st_size for f in plan.model_dir.rglob("*") if f.is_file())
    return plan.model_bytes or 0


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
