"""Who reaches the pods, and how many may leave at once: Service, Gateway, NetworkPolicy, PDB, ServiceAccount."""

from __future__ import annotations

from vllm_fleet.plan import Plan
from vllm_fleet.targets.kubernetes.manifests.objects import (
    Obj,
    endpoint_selector,
    meta,
    router_selector,
    selector,
    service_account_name,
    serving_component,
    serving_selector,
)

GATEWAY_API = "gateway.networking.k8s.io/v1"
INFERENCE_GROUP = "inference.networking.k8s.io"  # the Gateway API Inference Extension's InferencePool
# Namespaces the scrapers run in, let through the NetworkPolicy to read /metrics.
SCRAPER_NAMESPACE = {"podmonitoring": "gmp-system", "servicemonitor": "monitoring"}


def service(plan: Plan) -> Obj:
    """The client-facing Service: in front of the router's pods, or of the engines' without a router."""
    port = plan.spec.kubernetes.port
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(plan, plan.name, serving_component(plan)),
        "spec": {
            "type": "ClusterIP",
            "selector": service_selector(plan),
            "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def service_selector(plan: Plan) -> dict[str, str]:
    """The pods the client Service sends to: the router's, or without it the engines' (a LeaderWorkerSet's
    leaders only, issue 16)."""
    return router_selector(plan) if plan.spec.router.enabled else endpoint_selector(plan)


def service_account(plan: Plan) -> Obj:
    """The pods' identity; on GKE, Workload Identity maps it to an IAM service account (no key files)."""
    metadata = meta(plan, service_account_name(plan))
    if plan.spec.kubernetes.gcp_service_account:
        metadata["annotations"] = {"iam.gke.io/gcp-service-account": plan.spec.kubernetes.gcp_service_account}
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata,
        "automountServiceAccountToken": False,
    }


def disruption_budget(plan: Plan) -> Obj:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(plan, plan.name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(plan)}},
    }


def network_policy(plan: Plan) -> Obj:
    """Ingress to the serving port only: same namespace, the scraper's namespace, named namespaces and CIDRs.

    It covers the pods clients reach: the router's when it is enabled (the engines then get their own
    policy, router.py's ``engine_policy``), else the engines'.
    """
    k8s, peers = plan.spec.kubernetes, client_peers(plan)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, plan.name, serving_component(plan)),
        "spec": {
            "podSelector": {"matchLabels": serving_selector(plan)},
            "policyTypes": ["Ingress"],
            # the group rule only where this policy covers the engine pods (behind a router: engine_policy's)
            "ingress": [
                {"from": peers, "ports": [{"protocol": "TCP", "port": k8s.port}]},
                *([] if plan.spec.router.enabled else group_peers(plan)),
            ],
        },
    }


def client_peers(plan: Plan) -> list[Obj]:
    """Who may connect as a client: the namespace's pods, the scraper's and named namespaces, named CIDRs."""
    k8s = plan.spec.kubernetes
    namespaces = set(k8s.allowed_namespaces)
    if plan.spec.monitoring.scraper in SCRAPER_NAMESPACE:
        namespaces.add(SCRAPER_NAMESPACE[plan.spec.monitoring.scraper])
    peers: list[Obj] = [{"podSelector": {}}]
    peers += [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}} for ns in sorted(namespaces)]
    peers += [{"ipBlock": {"cidr": cidr}} for cidr in k8s.allowed_cidrs]
    return peers


def group_peers(plan: Plan) -> list[Obj]:
    """A LeaderWorkerSet's pods talk to each other on every port (Ray's head, its workers, NCCL)."""
    if plan.spec.resources.nodes == 1:
        return []
    return [{"from": [{"podSelector": {"matchLabels": selector(plan)}}]}]


def deny_ingress(plan: Plan, component: str) -> Obj:
    """A NetworkPolicy letting nothing in: for Job pods that only download."""
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": meta(plan, f"{plan.name}-{component}", component),
        "spec": {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": component}
            },
            "policyTypes": ["Ingress"],
        },
    }


def gateway(plan: Plan) -> list[Obj]:
    """Gateway API Gateway + HTTPRoute to the Service, or to the InferencePool (gateway.mode, issue 16)."""
    gw = plan.spec.gateway
    listener: Obj = {"name": "http", "protocol": "HTTP", "port": gw.port}
    if gw.hostname:
        listener["hostname"] = gw.hostname
    listener["allowedRoutes"] = {"namespaces": {"from": "Same"}}
    route: Obj = {"parentRefs": [{"name": plan.name}]}
    if gw.hostname:
        route["hostnames"] = [gw.hostname]
    route["rules"] = [{
        "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
        "backendRefs": [_backend(plan)],
    }]  # fmt: skip
    objects = [
        {"apiVersion": GATEWAY_API, "kind": "Gateway", "metadata": meta(plan, plan.name),
         "spec": {"gatewayClassName": gw.class_name, "listeners": [listener]}},
        {"apiVersion": GATEWAY_API, "kind": "HTTPRoute", "metadata": meta(plan, plan.name), "spec": route},
    ]  # fmt: skip
    if plan.spec.kubernetes.platform == "gke":
        objects.append(_gke_health_check(plan))
    return objects


def inference_pool_mode(plan: Plan) -> bool:
    """The Gateway sends to an InferencePool and its endpoint picker (inference.py), not to the Service."""
    return plan.spec.gateway.enabled and plan.spec.gateway.mode == "inference-pool"


def _backend(plan: Plan) -> Obj:
    if inference_pool_mode(plan):  # the pool's targetPorts say where; a port here is refused by implementations
        return {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": plan.name}
    return {"name": plan.name, "port": plan.spec.kubernetes.port}


def _gke_health_check(plan: Plan) -> Obj:
    """GKE's Gateway health-checks `/` by default; vLLM answers 404 there, so every backend looks down."""
    http = {"requestPath": "/health", "port": plan.spec.kubernetes.port}
    default: Obj = {"config": {"type": "HTTP", "httpHealthCheck": http}}
    target = {"group": "", "kind": "Service", "name": plan.name}
    if inference_pool_mode(plan):
        # GKE health-checks the pool's pods; 2 s instead of 5 s switches faster while the picker rolls out
        # (the Inference Extension's chart, config/charts/inferencepool/templates/gke.yaml at v1.5.0)
        default = {"timeoutSec": 2, "checkIntervalSec": 2} | default
        target = {"group": INFERENCE_GROUP, "kind": "InferencePool", "name": plan.name}
    return {
        "apiVersion": "networking.gke.io/v1",
        "kind": "HealthCheckPolicy",
        "metadata": meta(plan, plan.name),
        "spec": {"default": default, "targetRef": target},
    }
