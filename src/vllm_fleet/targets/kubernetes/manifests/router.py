"""The router on Kubernetes: its Deployment, identity, disruption budget, and the engine Service it follows.

With ``router.enabled`` the client-facing Service (network.py) selects the router's pods; the engine
pods get a Service of their own, ``NAME-engine``, whose EndpointSlices the router watches
(``vllm-fleet router --discover-k8s NS/NAME-engine:PORT``): the EndpointSlice controller marks an
endpoint not ready while its pod fails readiness and terminating once the pod is deleted, so the
router stops sending new requests to a pod as soon as its preStop drain starts. The router's
ServiceAccount may only get, list and watch EndpointSlices in its own namespace.
"""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.plan.budgets import ROUTER_PRESTOP_SLEEP_S
from vllm_fleet.registry import REGISTRY_ENV
from vllm_fleet.targets.kubernetes.manifests.network import SCRAPER_NAMESPACE, group_peers
from vllm_fleet.targets.kubernetes.manifests.objects import (
    TMP_MOUNT,
    TOKEN_DIR,
    Obj,
    api_token_volume,
    container_security,
    endpoint_selector,
    engine_service_name,
    meta,
    pod_security,
    router_name,
    router_selector,
    selector,
)

RBAC_API = "rbac.authorization.k8s.io/v1"
# Long enough for kube-proxy and the Gateway to take a terminating router pod out of rotation
# before it stops accepting connections (its own SIGTERM handling then finishes what is in flight);
# the Plan counts it in the router's grace period.
PRESTOP_SLEEP_S = ROUTER_PRESTOP_SLEEP_S


def manifests(plan: Plan) -> list[Obj]:
    """Every object the router adds (the client Service, its NetworkPolicy and scrape object are elsewhere)."""
    objects = [service_account(plan), role(plan), role_binding(plan), engine_service(plan), deployment(plan)]
    # as for the engines, availability.pod_disruption_budget decides; minAvailable 1 of a single pod
    # would block every node drain
    if plan.spec.availability.pod_disruption_budget and plan.spec.router.replicas > 1:
        objects.append(disruption_budget(plan))
    objects.append(engine_policy(plan))
    return objects


def discover_target(plan: Plan) -> str:
    """``NAMESPACE/SERVICE:PORT`` for ``--discover-k8s``: the engine Service's EndpointSlices."""
    k8s = plan.spec.kubernetes
    return f"{k8s.namespace}/{engine_service_name(plan)}:{k8s.port}"


def command(plan: Plan) -> list[str]:
    """The router container's command line."""
    router, port = plan.spec.router, plan.spec.kubernetes.port
    out = ["vllm-fleet", "router", "--discover-k8s", discover_target(plan), "--host", "0.0.0.0", "--port", str(port)]
    out += ["--policy", router.policy, "--retries", str(router.retries)]
    out += ["--shutdown-timeout", str(plan.derived["router_shutdown_timeout_s"].value)]
    if router.registry and not plan.spec.kubernetes.secrets.registry:  # else the Secret's VLLM_FLEET_REGISTRY
        out += ["--registry", router.registry]
    return out


def registry_env(plan: Plan) -> list[Obj]:
    """The registry URL from a Secret, when it holds a password (never in the manifest itself)."""
    secret = plan.spec.kubernetes.secrets.registry
    if not secret:
        return []
    return [{"name": REGISTRY_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": REGISTRY_ENV}}}]


def service_account(plan: Plan) -> Obj:
    """The router's own identity (not the engine's, which may carry a cloud identity for the weights)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(plan, router_name(plan), "router"),
        "automountServiceAccountToken": False,  # the pod mounts a short-lived projected token instead
    }


def role(plan: Plan) -> Obj:
    """Read EndpointSlices in the namespace: all the router needs from the API."""
    return {
        "apiVersion": RBAC_API,
        "kind": "Role",
        "metadata": meta(plan, router_name(plan), "router"),
        "rules": [
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
        ],
    }


def role_binding(plan: Plan) -> Obj:
    return {
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": meta(plan, router_name(plan), "router"),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": router_name(plan)},
        "subjects": [
            {"kind": "ServiceAccount", "name": router_name(plan), "namespace": plan.spec.kubernetes.namespace}
        ],
    }


def engine_service(plan: Plan) -> Obj:
    """A Service of the engine pods, so that the EndpointSlice controller lists them for the router.

    With a LeaderWorkerSet it selects the leaders only: a worker runs no API server, and an endpoint for
    it would be a backend the router could never reach.
    """
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(plan, engine_service_name(plan)),
        "spec": {
            "type": "ClusterIP",
            "selector": endpoint_selector(plan),
            "ports": [{"name": "http", "port": plan.spec.kubernetes.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def deployment(plan: Plan) -> Obj:
    """``router.replicas`` router pods, spread over nodes, from the engine's image (it has vllm-fleet)."""
    pod: Obj = {
        "serviceAccountName": router_name(plan),
        "automountServiceAccountToken": False,
        "securityContext": pod_security(plan),
        # in-flight streams finish before the router exits: the preStop sleep, then as long as an engine
        # gives a request (drain + vLLM's shutdown), then the margin, all derived in the Plan
        "terminationGracePeriodSeconds": int(plan.derived["router_termination_grace_s"].value or 0),
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",  # a one-node cluster still runs both
            "labelSelector": {"matchLabels": router_selector(plan)},
        }],
        "containers": [_container(plan)],
        "volumes": [{"name": "tmp", "emptyDir": {}}, api_token_volume()],
    }  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(plan, router_name(plan), "router"),
        "spec": {
            "replicas": plan.spec.router.replicas,
            "selector": {"matchLabels": router_selector(plan)},
            # router pods are small and need no GPU: surge one, never go below the replica count
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": router_selector(plan) | meta(plan, router_name(plan), "router")["labels"]},
                "spec": pod,
            },
        },
    }


def _container(plan: Plan) -> Obj:
    return {
        "name": "router",
        "image": plan.spec.kubernetes.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command(plan),
        "env": [{"name": "HOME", "value": "/tmp"}, *registry_env(plan)],
        "ports": [{"name": "http", "containerPort": plan.spec.kubernetes.port, "protocol": "TCP"}],
        "resources": {
            "requests": {"cpu": "250m", "memory": "256Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        # /health is 503 while no engine is ready: right for readiness (no traffic to a router with
        # nowhere to send it), wrong for liveness (a 20-minute cold start would restart the routers
        # in a loop). Liveness asks /metrics, which answers whenever the server's loop is alive.
        "readinessProbe": {
            "httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5, "timeoutSeconds": 3,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/metrics", "port": "http"}, "periodSeconds": 10, "timeoutSeconds": 5,
            "failureThreshold": 6,
        },
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_S)]}}},
        "volumeMounts": [TMP_MOUNT, {"name": "api-token", "mountPath": TOKEN_DIR, "readOnly": True}],
        "securityContext": container_security(),
    }  # fmt: skip


def disruption_budget(plan: Plan) -> Obj:
    """At least one router pod stays through voluntary disruptions (node drains, upgrades)."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(plan, router_name(plan), "router"),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": router_selector(plan)}},
    }


def engine_policy(plan: Plan) -> Obj:
    """Behind the router, the engine port takes connections from the router's pods and the scraper only."""
    peers: list[Obj] = [{"podSelector": {"matchLabels": router_selector(plan)}}]
    if plan.spec.monitoring.scraper in SCRAPER_NAMESPACE:
        ns = SCRAPER_NAMESPACE[plan.spec.monitoring.scraper]
        peers.append({"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, engine_service_name(plan)),
        "spec": {
            "podSelector": {"matchLabels": selector(plan)},
            "policyTypes": ["Ingress"],
            "ingress": [
                {"from": peers, "ports": [{"protocol": "TCP", "port": plan.spec.kubernetes.port}]},
                *group_peers(plan),  # a LeaderWorkerSet's pods reach each other (Ray, NCCL)
            ],
        },
    }
