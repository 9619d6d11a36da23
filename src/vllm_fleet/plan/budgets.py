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
# The router pod's preStop sleep: long enough for kube-proxy and the Gateway to take a terminating router
# pod out of rotation before it stops accepting connections.
ROUTER_PRESTOP_SLEEP_S = 5
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
    # A local stop (down, a rolling restart, a scale-down) sends SIGTERM, then waits this long for the group to
    # exit before SIGKILL: vLLM finishes what it holds within its --shutdown-timeout (and exits at once when
    # idle, so an idle down stays quick).
    derived["stop_grace_s"] = Derived(
        av.shutdown_timeout_s + GRACE_MARGIN_S,
        f"availability.shutdown_timeout_s {av.shutdown_timeout_s} s (vLLM --shutdown-timeout) + "
        f"{GRACE_MARGIN_S} s margin: SIGTERM to SIGKILL of a local replica",
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
    if spec.router.enabled:
        out |= _router_grace(spec)
    out |= _scaling_target(spec)
    out["max_replicas"] = Derived(
        max(spec.replicas, spec.scaling.max_replicas) if spec.scaling.mode != "none" else spec.replicas,
        "replicas, or scaling.max_replicas when autoscaling",
    )
    return out


def _router_grace(spec: FleetSpec) -> dict[str, Derived]:
    """The router pod's shutdown: in-flight answers get as long as an engine gives its own (the same rule).

    A request an engine accepted lasts at most its drain wait plus vLLM's --shutdown-timeout once the
    engine is told to stop; the router gives the answers it is relaying that long after SIGTERM.
    """
    av = spec.availability
    shutdown = av.drain_timeout_s + av.shutdown_timeout_s
    return {
        "router_shutdown_timeout_s": Derived(
            shutdown,
            f"availability.drain_timeout_s {av.drain_timeout_s} s + availability.shutdown_timeout_s "
            f"{av.shutdown_timeout_s} s: what an engine gives a request in flight (router --shutdown-timeout)",
        ),
        "router_termination_grace_s": Derived(
            ROUTER_PRESTOP_SLEEP_S + shutdown + GRACE_MARGIN_S,
            f"{ROUTER_PRESTOP_SLEEP_S} s preStop sleep + router shutdown timeout {shutdown} s + "
            f"{GRACE_MARGIN_S} s margin",
        ),
    }


# GPU utilisation to aim for when the spec names none (GKE's autoscaling best practices start near here).
DEFAULT_GPU_UTIL_PERCENT = 80


def _scaling_target(spec: FleetSpec) -> dict[str, Derived]:
    """The autoscaler's per-replica target for scaling.metric, and the value the HPA compares (issue 16).

    GPU utilisation is per GPU, but the HPA sums an External metric over every series it matches and
    divides by the replicas (AverageValue): a replica with N GPUs contributes N series.
    """
    sc, gpus = spec.scaling, spec.resources.gpus
    if sc.metric == "waiting":
        value = sc.target or sc.target_waiting
        target = Derived(value, "scaling.target" if sc.target else "scaling.target_waiting")
    elif sc.metric == "running":
        value = sc.target or max(1, math.floor(spec.engine.max_num_seqs * 0.75))
        why = "scaling.target" if sc.target else f"3/4 of engine.max_num_seqs {spec.engine.max_num_seqs}"
        target = Derived(value, f"{why}: requests in the batch per replica")
    else:
        value = sc.target or DEFAULT_GPU_UTIL_PERCENT
        target = Derived(value, f"{'scaling.target' if sc.target else 'default'} % utilisation per GPU")
    out = {"scaling_target": target}
    per_replica = float(target.value or 0) * (max(gpus, 1) if sc.metric == "gpu-utilization" else 1)
    out["scaling_average_value"] = Derived(
        per_replica,
        f"{target.value:g} % x {max(gpus, 1)} GPUs per replica (one series per GPU, summed by the HPA)"
        if sc.metric == "gpu-utilization"
        else "the target per replica",
    )
    return out
