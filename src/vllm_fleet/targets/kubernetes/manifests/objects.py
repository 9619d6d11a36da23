"""Small builders every manifest shares: metadata, labels, secure container defaults.

Everything here is a plain dict; the order of keys is the order they are
written in, so rendering stays byte-identical for the same Plan.
"""

from __future__ import annotations

from typing import Any

from vllm_fleet.plan import Plan

Obj = dict[str, Any]
# Writable scratch for every container: the root filesystem is read-only, HOME points here.
TMP_MOUNT = {"name": "tmp", "mountPath": "/tmp"}
# Where in-cluster clients (lightkube's KubeConfig.from_service_account, client-go's rest.InClusterConfig)
# read the token, CA and namespace.
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TOKEN_EXPIRY_S = 3600  # the kubelet rotates it at 80 % of this; the clients re-read the token file
# The label LeaderWorkerSet puts on every pod: its index in the group (lws api/leaderworkerset/v1).
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"


def selector(plan: Plan) -> dict[str, str]:
    """Labels that select this deployment's pods (stable across renders, never the env)."""
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": "engine"}


def endpoint_selector(plan: Plan) -> dict[str, str]:
    """The engine pods that answer HTTP: every engine pod, or only a LeaderWorkerSet's leaders (issue 16).

    LWS labels each pod of a group with its index; the leader is 0 and runs the API server, the workers
    only join its Ray cluster. Services (the client one without a router, NAME-engine behind it) use this.
    """
    if plan.spec.resources.nodes > 1:
        return selector(plan) | {LWS_WORKER_INDEX: "0"}
    return selector(plan)


def router_selector(plan: Plan) -> dict[str, str]:
    """Labels that select the router's pods (never an engine pod: the component differs)."""
    return {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": "router"}


def serving_selector(plan: Plan) -> dict[str, str]:
    """The pods clients reach: the router's when it is enabled, else the engines' (all of a group's pods:
    what the client NetworkPolicy covers; the Service itself narrows to ``endpoint_selector``)."""
    return router_selector(plan) if plan.spec.router.enabled else selector(plan)


def serving_component(plan: Plan) -> str:
    """The component label of the client-facing Service (what a ServiceMonitor tells it apart by)."""
    return "router" if plan.spec.router.enabled else "engine"


def engine_service_name(plan: Plan) -> str:
    """The Service of the engine pods behind the router: its EndpointSlices are what the router follows."""
    return f"{plan.name}-engine"


def router_name(plan: Plan) -> str:
    """The router's Deployment, ServiceAccount, Role, PDB and scrape object."""
    return f"{plan.name}-router"


def labels(plan: Plan, component: str = "engine") -> dict[str, str]:
    """Labels on every object."""
    out = {"app.kubernetes.io/name": plan.name, "app.kubernetes.io/component": component}
    out["app.kubernetes.io/managed-by"] = "vllm-fleet"
    if plan.env:
        out["vllm-fleet.io/environment"] = plan.env
    return out


def meta(plan: Plan, name: str, component: str = "engine", *, namespaced: bool = True, **extra: Any) -> Obj:
    """metadata of one object."""
    out: Obj = {"name": name}
    if namespaced:
        out["namespace"] = plan.spec.kubernetes.namespace
    out["labels"] = labels(plan, component)
    out.update(extra)
    return out


def pod_security(plan: Plan) -> Obj:
    """Pod securityContext: non-root, RuntimeDefault seccomp; fsGroup makes volumes writable for the uid."""
    uid = plan.spec.kubernetes.run_as_user
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "fsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security() -> Obj:
    """Container securityContext: no privilege escalation, no capabilities, read-only root filesystem."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def tool_container(plan: Plan, name: str, command: list[str], mounts: list[Obj], env: list[Obj] | None = None) -> Obj:
    """A container running this package (`vllm-fleet ...`) from the project's image."""
    out: Obj = {
        "name": name,
        "image": plan.spec.kubernetes.image,
        "imagePullPolicy": "IfNotPresent",
        "command": command,
        "env": [{"name": "HOME", "value": "/tmp"}, *(env or [])],
        "resources": {
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "4", "memory": "4Gi"},
        },
        "volumeMounts": [*mounts, TMP_MOUNT],
        "securityContext": container_security(),
    }
    return out


def secret_env(plan: Plan) -> list[Obj]:
    """Credentials for a stager, as Secret references only (values never pass through vllm-fleet)."""
    k8s = plan.spec.kubernetes
    env: list[Obj] = []
    if k8s.secrets.hf_token:
        env.append(_from_secret("HF_TOKEN", k8s.secrets.hf_token))
    if k8s.secrets.s3:
        env += [_from_secret(key, k8s.secrets.s3) for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")]
    if k8s.s3_endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": k8s.s3_endpoint_url})
    return env


def _from_secret(key: str, secret: str) -> Obj:
    return {"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def service_account_name(plan: Plan) -> str:
    """The ServiceAccount the pods run as (rendered by us)."""
    return plan.spec.kubernetes.service_account or plan.name


def api_token_volume() -> Obj:
    """What automounting would mount (token, CA, namespace), as an explicit projected volume with a short expiry.

    https://kubernetes.io/docs/concepts/storage/projected-volumes/#serviceaccounttoken : only the pods
    that call the API (the router, the endpoint picker) mount one; the others keep automountServiceAccountToken
    false.
    """
    return {
        "name": "api-token",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": TOKEN_EXPIRY_S}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [
                    {"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
                ]}},
            ],
        },
    }  # fmt: skip
