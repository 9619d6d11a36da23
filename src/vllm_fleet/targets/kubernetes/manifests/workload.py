"""The Deployment: the vLLM engine container, its probes, drain, and the pod around it."""

from __future__ import annotations

from vllm_fleet import engine
from vllm_fleet.plan import STARTUP_PROBE_PERIOD_S, Plan
from vllm_fleet.targets.kubernetes.manifests.objects import (
    TMP_MOUNT,
    Obj,
    container_security,
    meta,
    pod_security,
    selector,
    service_account_name,
    tool_container,
)
from vllm_fleet.targets.kubernetes.manifests.platform import gpu_node_selector, gpu_tolerations, image_cache_selector
from vllm_fleet.targets.kubernetes.manifests.storage import StorageParts, model_dir, weights_mount

# /dev/shm for NCCL between tensor-parallel workers; the container default (64 MiB) hangs or crashes them.
SHM_SIZE = "16Gi"


def deployment(plan: Plan, parts: StorageParts) -> Obj:
    """The Deployment running the engine, with the storage profile's volumes and init containers."""
    spec = plan.spec
    dep_spec: Obj = {}
    if spec.scaling.mode == "none":
        dep_spec["replicas"] = spec.replicas
    dep_spec |= {
        "selector": {"matchLabels": selector(plan)},
        # GPU-bound clusters rarely have a spare GPU node for a surge pod: replace one at a time.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
        "template": pod_template(plan, parts, [_engine(plan)]),
    }
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(plan, plan.name), "spec": dep_spec}


def pod_template(plan: Plan, parts: StorageParts, containers: list[Obj]) -> Obj:
    """The pod around ``containers``: identity, security, grace period, node selection, storage, prefetch."""
    spec = plan.spec
    pod: Obj = {
        "serviceAccountName": service_account_name(plan),
        "automountServiceAccountToken": False,
        "securityContext": pod_security(plan),
        "terminationGracePeriodSeconds": plan.termination_grace_s,
    }
    node_selector = gpu_node_selector(plan) | parts.node_selector | image_cache_selector(plan)
    if node_selector:
        pod["nodeSelector"] = node_selector
    if gpu_tolerations(plan):
        pod["tolerations"] = gpu_tolerations(plan)
    if int(plan.derived["max_replicas"].value or 1) > 1:
        pod["affinity"] = _spread(plan)
    init = list(parts.init_containers)
    if spec.storage.prefetch:
        init.append(_prefetch_sidecar(plan))
    if init:
        pod["initContainers"] = init
    pod["containers"] = containers
    pod["volumes"] = [*parts.volumes, {"name": "tmp", "emptyDir": {}}]
    if needs_shm(plan):
        pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}})
    template_meta: Obj = {"labels": selector(plan) | meta(plan, plan.name)["labels"]}
    if parts.pod_annotations:
        template_meta["annotations"] = dict(parts.pod_annotations)
    return {"metadata": template_meta, "spec": pod}


def needs_shm(plan: Plan) -> bool:
    """/dev/shm for NCCL: tensor parallel in the pod, or a replica spanning nodes (issue 16)."""
    return plan.spec.engine.tensor_parallel_size > 1 or plan.spec.resources.nodes > 1


def _engine(plan: Plan) -> Obj:
    return engine_container(plan, ["python3", "-m", engine.API_SERVER_MODULE, *plan.pod_engine_args])


def engine_container(plan: Plan, argv: list[str]) -> Obj:
    """The engine container running ``argv``: probes, drain, resources and mounts from the Plan."""
    spec = plan.spec
    port = spec.kubernetes.port
    env = [{"name": k, "value": v} for k, v in sorted(engine.vllm_env(plan.spec).items())]
    env += [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/.cache"}]
    resources = {"cpu": spec.resources.cpu, "memory": spec.resources.memory}
    if spec.resources.gpus:
        resources["nvidia.com/gpu"] = str(spec.resources.gpus)
    mounts = [weights_mount(plan, read_only=True), TMP_MOUNT]
    if needs_shm(plan):
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    health = {"httpGet": {"path": "/health", "port": "http"}}
    drain = spec.availability.drain_timeout_s
    return {
        "name": "vllm",
        "image": spec.kubernetes.image,
        "imagePullPolicy": "IfNotPresent",
        "command": argv[:3],
        "args": argv[3:],
        "env": env,
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "startupProbe": health | {
            "periodSeconds": STARTUP_PROBE_PERIOD_S,
            "failureThreshold": int(plan.derived["startup_failure_threshold"].value or 1),
        },
        "readinessProbe": health | {"periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        "livenessProbe": health | {"periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 6},
        "lifecycle": {"preStop": {"exec": {"command": [
            "vllm-fleet", "drain", "--url", f"http://127.0.0.1:{port}", "--timeout", str(drain),
        ]}}},
        "volumeMounts": mounts,
        "securityContext": container_security(),
    }  # fmt: skip


def _prefetch_sidecar(plan: Plan) -> Obj:
    """`vllm-fleet prefetch` as a native sidecar (issue 6): warms the page cache while vLLM starts.

    It then sleeps: a native sidecar that exits is restarted. Its memory limit equals the engine's
    because page cache is charged to the cgroup that reads it; a small limit would evict what it warmed.
    """
    command = ["sh", "-c", 'vllm-fleet prefetch "$0"; exec sleep infinity', model_dir(plan)]
    container = tool_container(plan, "prefetch", command, [weights_mount(plan, read_only=True)])
    container["restartPolicy"] = "Always"
    container["resources"] = {
        "requests": {"cpu": "1", "memory": "256Mi"},
        "limits": {"cpu": "4", "memory": plan.spec.resources.memory},
    }
    return container


def _spread(plan: Plan) -> Obj:
    term = {"labelSelector": {"matchLabels": selector(plan)}, "topologyKey": "kubernetes.io/hostname"}
    return {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": term},
    ]}}  # fmt: skip
