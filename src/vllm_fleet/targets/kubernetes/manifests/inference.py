"""gateway.mode inference-pool: an InferencePool of the engine pods and its endpoint picker (issue 16).

For gateways that implement the Gateway API Inference Extension (GKE's Inference Gateway, Istio,
kgateway, NGINX Gateway Fabric, ...): the HTTPRoute sends to the InferencePool (network.py), and for
every request the gateway asks the endpoint picker (EPP, an ext-proc gRPC server) which pod to use; the
EPP scores the pods from their vLLM /metrics (queue, KV cache, prefix cache) as our router would. So the
router is off in this mode (a spec error otherwise), and the engines' NetworkPolicy lets the gateway's
proxies in (kubernetes.allowed_cidrs / allowed_namespaces) as it does without a router.

The objects follow the Inference Extension's Helm chart at v1.5.0 (config/charts/inferencepool and
config/charts/epplib): the pool (inference.networking.k8s.io/v1), the EPP's ServiceAccount, Role
(pods and the pool's APIs, read only), ConfigMap (the chart's default vLLM scoring profile),
Deployment (one replica, Recreate: the chart's advice for a picker that keeps prefix-cache state),
Service (ext-proc 9002, metrics 9090) and, ours, a NetworkPolicy. Not rendered: the chart's optional
InferenceObjectives, GKE's GCPBackendPolicy, a scrape object for the EPP's metrics.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.network import INFERENCE_GROUP, client_peers
from vllm_fleet.targets.kubernetes.manifests.objects import (
    TMP_MOUNT,
    TOKEN_DIR,
    Obj,
    api_token_volume,
    container_security,
    endpoint_selector,
    meta,
    pod_security,
)

API = f"{INFERENCE_GROUP}/v1"
RBAC_API = "rbac.authorization.k8s.io/v1"
COMPONENT = "epp"
EXT_PROC_PORT = 9002  # the gateway's ext-proc calls
HEALTH_PORT = 9003  # gRPC health, the probes'
METRICS_PORT = 9090
CONFIG_DIR = "/config"
CONFIG_FILE = "default-plugins.yaml"
# The chart's default EndpointPickerConfig for vLLM over HTTP (epplib/templates/_config.yaml, v1.5.0):
# queue depth and KV cache usage weigh 2, prefix-cache hits 3, metrics read from each pod's /metrics.
PLUGINS = """\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: EndpointPickerConfig
plugins:
- type: queue-scorer
- type: kv-cache-utilization-scorer
- type: prefix-cache-scorer
- type: metrics-data-source
  parameters:
    scheme: "http"
    path: "/metrics"
    insecureSkipVerify: true
- type: core-metrics-extractor
schedulingProfiles:
- name: default
  plugins:
  - pluginRef: queue-scorer
    weight: 2
  - pluginRef: kv-cache-utilization-scorer
    weight: 2
  - pluginRef: prefix-cache-scorer
    weight: 3
"""


def epp_name(plan: Plan) -> str:
    """The endpoint picker's Deployment, Service, ServiceAccount, Role, ConfigMap and NetworkPolicy."""
    return f"{plan.name}-epp"


def epp_selector(plan: Plan) -> dict[str, str]:
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": COMPONENT}


def manifests(plan: Plan) -> list[Obj]:
    """The endpoint picker's objects, then the pool that names it (the HTTPRoute comes with the Gateway)."""
    return [
        service_account(plan), role(plan), role_binding(plan), config_map(plan), deployment(plan),
        service(plan), network_policy(plan), inference_pool(plan),
    ]  # fmt: skip


def inference_pool(plan: Plan) -> Obj:
    """The engine pods (a LeaderWorkerSet's leaders only) on the engine port, picked by the EPP."""
    return {
        "apiVersion": API,
        "kind": "InferencePool",
        "metadata": meta(plan, plan.name),
        "spec": {
            "selector": {"matchLabels": endpoint_selector(plan)},
            "targetPorts": [{"number": plan.spec.kubernetes.port}],
            "endpointPickerRef": {
                "name": epp_name(plan),
                "port": {"number": EXT_PROC_PORT},  # the Service's port (required for a Service)
                "failureMode": plan.spec.gateway.epp_failure_mode,
            },
        },
    }


def service_account(plan: Plan) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "automountServiceAccountToken": False,  # the pod mounts a short-lived projected token instead
    }


def role(plan: Plan) -> Obj:
    """What the chart's Roles grant the EPP in its namespace: read the pods, the pool, its objectives."""
    read = ["get", "watch", "list"]
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "rules": [
            {"apiGroups": [""], "resources": ["pods"], "verbs": read},
            {"apiGroups": [INFERENCE_GROUP], "resources": ["inferencepools"], "verbs": read},
            {"apiGroups": ["inference.networking.x-k8s.io"],
             "resources": ["inferenceobjectives", "inferencemodelrewrites"], "verbs": read},
        ],
    }  # fmt: skip


def role_binding(plan: Plan) -> Obj:
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": epp_name(plan)},
        "subjects": [{"kind": "ServiceAccount", "name": epp_name(plan), "namespace": plan.spec.kubernetes.namespace}],
    }


def config_map(plan: Plan) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "data": {CONFIG_FILE: PLUGINS},
    }


def command(plan: Plan) -> list[str]:
    """The EPP's arguments (pkg/epp/server/options.go at v1.5.0): its pool, the config file, JSON logs."""
    return [
        "--pool-name", plan.name, "--pool-namespace", plan.spec.kubernetes.namespace, "--pool-group", INFERENCE_GROUP,
        "--config-file", f"{CONFIG_DIR}/{CONFIG_FILE}", "--zap-encoder", "json", "--tracing=false",
    ]  # fmt: skip


def deployment(plan: Plan) -> Obj:
    """One picker pod; Recreate, as the chart: a second replica would only split its prefix-cache view."""
    probe = {"grpc": {"port": HEALTH_PORT, "service": "inference-extension"}}
    container: Obj = {
        "name": COMPONENT,
        "image": plan.spec.gateway.epp_image,
        "imagePullPolicy": "IfNotPresent",
        "args": command(plan),
        "env": [
            {"name": "NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
        "ports": [
            {"name": "grpc", "containerPort": EXT_PROC_PORT, "protocol": "TCP"},
            {"name": "grpc-health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        # the chart's requests (scale-tested at high QPS); it leaves CPU unlimited, we bound it at twice that
        "resources": {"requests": {"cpu": "4", "memory": "8Gi"}, "limits": {"cpu": "8", "memory": "16Gi"}},
        "livenessProbe": probe | {"initialDelaySeconds": 5, "periodSeconds": 10},
        "readinessProbe": probe | {"periodSeconds": 2},
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            TMP_MOUNT,
            {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True},
        ],
        "securityContext": container_security(),
    }
    pod: Obj = {
        "serviceAccountName": epp_name(plan),
        "automountServiceAccountToken": False,
        "securityContext": pod_security(plan),
        # the chart: as long as the pool's pods may take to finish (their drain and vLLM's shutdown)
        "terminationGracePeriodSeconds": plan.termination_grace_s,
        "containers": [container],
        "volumes": [
            {"name": "config", "configMap": {"name": epp_name(plan)}},
            {"name": "tmp", "emptyDir": {}},
            api_token_volume(),
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": epp_selector(plan)},
            "template": {"metadata": {"labels": meta(plan, epp_name(plan), COMPONENT)["labels"]}, "spec": pod},
        },
    }


def service(plan: Plan) -> Obj:
    """What the pool's endpointPickerRef names: ext-proc for the gateway, metrics beside it."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "spec": {
            "type": "ClusterIP",
            "selector": epp_selector(plan),
            "ports": [
                {"name": "grpc-ext-proc", "port": EXT_PROC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "http-metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def network_policy(plan: Plan) -> Obj:
    """The gateway's proxies reach the picker as they reach the engines (the same peers), on its two ports."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, epp_name(plan), COMPONENT),
        "spec": {
            "podSelector": {"matchLabels": epp_selector(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": client_peers(plan),
                "ports": [{"protocol": "TCP", "port": EXT_PROC_PORT}, {"protocol": "TCP", "port": METRICS_PORT}],
            }],
        },
    }  # fmt: skip
