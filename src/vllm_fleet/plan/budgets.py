"""Time budgets from the model's size: how long a start may take, how long a drain may take.

A startup budget that is too short kills a pod that was loading fine; one too long
hides a hang. Both come from the model bytes and the storage's read bandwidth.
"""

from __future__ import annotations

import math

from vllm_fleet.plan.derived import Derived
from vllm_fleet.spec import FleetSpec

# A cloud persistent disk (pd-balanced) reads at about 240 MB/s per volume: the
# assumption for the startup budget until probe-storage measures the real one.
ASSUMED_READ_BANDWIDTH_BPS = 240e6
# Time vLLM spends before and after reading weights (imports, profiling, KV cache).
ENGINE_INIT_S = 90
# After the preStop drain and vLLM's own shutdown: the process exit, the log flush, a slow node.
GRACE_MARGIN_S = 15
# Kubernetes startup probe period; the failure threshold is the budget divided by it.
STARTUP_PROBE_PERIOD_S = 10


def derive(spec: FleetSpec, model_bytes: int | None) -> dict[str, Derived]:
    """The startup budget, the expected load time and the termination grace period."""
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
    av = spec.availability
    derived["shutdown_timeout_s"] = Derived(
        av.shutdown_timeout_s, "availability.shutdown_timeout_s: vLLM --shutdown-timeout after the drain"
    )
    # The kubelet's grace period covers the preStop hook AND the SIGTERM after it (pod lifecycle docs):
    # the drain waits up to drain_timeout_s, then vLLM finishes in-flight requests up to its shutdown timeout.
    grace = av.drain_timeout_s + av.shutdown_timeout_s + GRACE_MARGIN_S
    derived["termination_grace_s"] = Derived(
        grace,
        f"availability.drain_timeout_s {av.drain_timeout_s} s (preStop drain) + availability.shutdown_timeout_s "
        f"{av.shutdown_timeout_s} s (vLLM --shutdown-timeout) + {GRACE_MARGIN_S} s margin",
    )
    return derived


def derive_kubernetes(spec: FleetSpec, pod_model_key: str, derived: dict[str, Derived]) -> dict[str, Derived]:
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
        out["pod_model_dir"] = Derived(
            f"{st.mount_path}/models/{pod_model_key}", "storage.mount_path + cache layout models/KEY"
        )
    default_mode = {"pd-preloaded": "ReadOnlyMany", "nfs": "ReadWriteMany", "gcsfuse": "ReadOnlyMany",
                    "local-nvme": "node-local"}  # fmt: skip
    mode = st.access_mode or default_mode.get(st.profile, "ReadWriteOnce")
    out["access_mode"] = Derived(mode, "storage.access_mode" if st.access_mode else f"default of {st.profile}")
    out["max_replicas"] = Derived(
        max(spec.replicas, spec.scaling.max_replicas) if spec.scaling.mode != "none" else spec.replicas,
        "replicas, or scaling.max_replicas when autoscaling",
    )
    return out
