"""The router on Kubernetes (router issue): its own Deployment in front of the engines, found by EndpointSlices."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tests.unit.targets.kubernetes.test_render import CASES, EXAMPLES, _render, _spec, validate
from vllm_fleet.plan import load_plan
from vllm_fleet.targets.kubernetes.manifests.objects import LWS_WORKER_INDEX as WORKER_INDEX
from vllm_fleet.targets.kubernetes.manifests.render import render

# The examples that keep the router (the Inference Gateway one lets the endpoint picker choose instead).
ROUTED = [c for c in CASES if load_plan(*c.values).spec.router.enabled]


def _by(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _pod_labels(objects: list[dict], name: str) -> dict[str, str]:
    """A pod's labels: the Deployment's template, or a LeaderWorkerSet's leader (LWS adds its index, 0)."""
    lws = [o for o in objects if o["kind"] == "LeaderWorkerSet" and o["metadata"]["name"] == name]
    if lws:
        template = lws[0]["spec"]["leaderWorkerTemplate"]["leaderTemplate"]
        return template["metadata"]["labels"] | {WORKER_INDEX: "0"}
    return _by(objects, "Deployment", name)["spec"]["template"]["metadata"]["labels"]


def _worker_labels(objects: list[dict], name: str) -> dict[str, str] | None:
    """A LeaderWorkerSet worker's labels (its index 1 and up), or None for a Deployment."""
    lws = [o for o in objects if o["kind"] == "LeaderWorkerSet" and o["metadata"]["name"] == name]
    if not lws:
        return None
    return lws[0]["spec"]["leaderWorkerTemplate"]["workerTemplate"]["metadata"]["labels"] | {WORKER_INDEX: "1"}


def _without_router(path: Path, env: str | None) -> list[dict]:
    plan = copy.deepcopy(load_plan(path, env))
    object.__setattr__(plan.spec.router, "enabled", False)
    return render(plan)


@pytest.mark.parametrize(("path", "env"), ROUTED)
def test_the_router_is_rendered_by_default_and_validates(path: Path, env: str | None) -> None:
    plan = load_plan(path, env)
    objects = render(plan)
    name, router = plan.name, f"{plan.name}-router"
    for kind in ("ServiceAccount", "Role", "RoleBinding", "Deployment", "PodDisruptionBudget"):
        validate(_by(objects, kind, router))
    validate(_by(objects, "Service", f"{name}-engine"))
    validate(_by(objects, "NetworkPolicy", f"{name}-engine"))
    deployment = _by(objects, "Deployment", router)
    assert deployment["spec"]["replicas"] == plan.spec.router.replicas == 2
    assert _by(objects, "PodDisruptionBudget", router)["spec"]["minAvailable"] == 1
    if plan.spec.monitoring.scraper != "none":
        scrape = next(
            o for o in objects if o["metadata"]["name"] == router and o["kind"] in ("PodMonitoring", "ServiceMonitor")
        )
        validate(scrape)


def test_the_router_pod_runs_the_router_on_the_engine_service() -> None:
    plan = load_plan(EXAMPLES[0], "production")
    objects = render(plan)
    ns, port = plan.spec.kubernetes.namespace, plan.spec.kubernetes.port
    pod = _by(objects, "Deployment", f"{plan.name}-router")["spec"]["template"]["spec"]
    engine_pod = _by(objects, "Deployment", plan.name)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:4] == ["vllm-fleet", "router", "--discover-k8s", f"{ns}/{plan.name}-engine:{port}"]
    assert command[command.index("--port") + 1] == str(port)
    assert command[command.index("--policy") + 1] == plan.spec.router.policy
    assert command[command.index("--retries") + 1] == str(plan.spec.router.retries)
    assert container["image"] == engine_pod["containers"][0]["image"] == plan.spec.kubernetes.image
    # the engine's grace rule: what an engine gives a request in flight (drain + vLLM's shutdown), here
    # after the preStop sleep, plus the same margin
    av = plan.spec.availability
    assert command[command.index("--shutdown-timeout") + 1] == str(av.drain_timeout_s + av.shutdown_timeout_s)
    grace, engine_grace = pod["terminationGracePeriodSeconds"], engine_pod["terminationGracePeriodSeconds"]
    assert grace == 5 + av.drain_timeout_s + av.shutdown_timeout_s + 15 == engine_grace + 5
    assert "preStop sleep" in plan.derived["router_termination_grace_s"].why
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["port"] == "http"
    assert container["securityContext"] == engine_pod["containers"][0]["securityContext"]
    assert pod["securityContext"] == engine_pod["securityContext"]
    assert container["resources"]["limits"]["cpu"] and "nvidia.com/gpu" not in container["resources"]["limits"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["serviceAccountName"] == f"{plan.name}-router" != engine_pod["serviceAccountName"]
    # the only pod with an API token, a projected one where in-cluster clients look for it
    assert pod["automountServiceAccountToken"] is False
    token = next(v for v in pod["volumes"] if v["name"] == "api-token")["projected"]["sources"]
    assert token[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-token")
    assert mount == {
        "name": "api-token",
        "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
        "readOnly": True,
    }
    # the engines still drain on the way out
    assert engine_pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][:2] == ["vllm-fleet", "drain"]


def test_the_role_grants_only_reading_endpointslices_in_the_namespace() -> None:
    plan = load_plan(EXAMPLES[0])
    objects = render(plan)
    role = _by(objects, "Role", f"{plan.name}-router")
    assert role["metadata"]["namespace"] == plan.spec.kubernetes.namespace
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    binding = _by(objects, "RoleBinding", f"{plan.name}-router")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{plan.name}-router", "namespace": plan.spec.kubernetes.namespace}
    ]
    assert not any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in objects)


@pytest.mark.parametrize(("path", "env"), ROUTED)
def test_services_select_the_router_and_the_engines_apart(path: Path, env: str | None) -> None:
    plan = load_plan(path, env)
    objects = render(plan)
    router_pods, engine_pods = _pod_labels(objects, f"{plan.name}-router"), _pod_labels(objects, plan.name)
    client = _by(objects, "Service", plan.name)["spec"]["selector"]
    engine = _by(objects, "Service", f"{plan.name}-engine")["spec"]["selector"]
    assert _matches(client, router_pods) and not _matches(client, engine_pods)
    assert _matches(engine, engine_pods) and not _matches(engine, router_pods)
    # clients reach the router; the engine port only the router's pods and the scraper
    client_policy = _by(objects, "NetworkPolicy", plan.name)["spec"]
    assert _matches(client_policy["podSelector"]["matchLabels"], router_pods)
    assert not _matches(client_policy["podSelector"]["matchLabels"], engine_pods)
    engine_policy = _by(objects, "NetworkPolicy", f"{plan.name}-engine")["spec"]
    assert _matches(engine_policy["podSelector"]["matchLabels"], engine_pods)
    workers = _worker_labels(objects, plan.name)
    if workers is not None:  # multi-node: the router follows the leaders only; the policy covers the group
        assert not _matches(engine, workers) and not _matches(client, workers)
        assert _matches(engine_policy["podSelector"]["matchLabels"], workers)
        (group,) = [rule for rule in engine_policy["ingress"] if "ports" not in rule]
        assert _matches(group["from"][0]["podSelector"]["matchLabels"], workers)
        assert not any("ports" not in rule for rule in client_policy["ingress"])
    peers = engine_policy["ingress"][0]["from"]
    assert _matches(peers[0]["podSelector"]["matchLabels"], router_pods)
    assert all("podSelector" not in p or p is peers[0] for p in peers) and not any("ipBlock" in p for p in peers)
    assert len(peers) == (2 if plan.spec.monitoring.scraper != "none" else 1)
    for policy in (client_policy, engine_policy):
        assert policy["ingress"][0]["ports"] == [{"protocol": "TCP", "port": plan.spec.kubernetes.port}]
    # Gateway and GKE's health check point at the client-facing Service
    if plan.spec.gateway.enabled:
        backend = _by(objects, "HTTPRoute", plan.name)["spec"]["rules"][0]["backendRefs"][0]
        assert backend["name"] == plan.name
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    for monitor in (o for o in objects if o["kind"] == "ServiceMonitor"):  # each finds only its own Service
        found = [
            n
            for n, s in services.items()
            if _matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
        ]
        assert found == [plan.name if monitor["metadata"]["name"].endswith("-router") else f"{plan.name}-engine"]
    for monitor in (o for o in objects if o["kind"] == "PodMonitoring"):
        pods = router_pods if monitor["metadata"]["name"].endswith("-router") else engine_pods
        other = engine_pods if pods is router_pods else router_pods
        assert _matches(monitor["spec"]["selector"]["matchLabels"], pods)
        assert not _matches(monitor["spec"]["selector"]["matchLabels"], other)


def test_router_disabled_renders_no_router_and_the_engines_behind_the_service() -> None:
    objects = _render(_spec(router={"enabled": False}))
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert not any(n.endswith(("-router", "-engine")) for _, n in names)
    assert not any(o["kind"] in ("Role", "RoleBinding") for o in objects)
    engine_pods = _pod_labels(objects, "m")
    assert _matches(_by(objects, "Service", "m")["spec"]["selector"], engine_pods)
    assert _matches(_by(objects, "NetworkPolicy", "m")["spec"]["podSelector"]["matchLabels"], engine_pods)


@pytest.mark.parametrize(("path", "env"), ROUTED)
def test_the_router_only_adds_objects_and_moves_the_client_service(path: Path, env: str | None) -> None:
    """router.enabled false is the render from before the router; true adds objects and changes only the
    client-facing Service's and NetworkPolicy's selector and component label (the ServiceMonitor tells them
    apart by it)."""
    before = _without_router(path, env)
    after = render(load_plan(path, env))
    index = {(o["kind"], o["metadata"]["name"]): o for o in after}
    assert len(index) == len(after)
    name = load_plan(path, env).name
    for obj in before:
        key = (obj["kind"], obj["metadata"]["name"])
        now = copy.deepcopy(index.pop(key))
        if key in (("Service", name), ("NetworkPolicy", name)):
            assert now["metadata"]["labels"]["app.kubernetes.io/component"] == "router"
            now["metadata"]["labels"]["app.kubernetes.io/component"] = "engine"
            where = now["spec"]["selector"] if key[0] == "Service" else now["spec"]["podSelector"]["matchLabels"]
            assert where == {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "router"}
            before_where = obj["spec"]["selector"] if key[0] == "Service" else obj["spec"]["podSelector"]["matchLabels"]
            where.clear()
            where.update(before_where)  # multi-node: the leaders-only key moves to NAME-engine
            if key[0] == "NetworkPolicy":  # multi-node: the group's own rule moves to NAME-engine's policy
                group = [rule for rule in obj["spec"]["ingress"] if "ports" not in rule]
                engine_rules = index[("NetworkPolicy", f"{name}-engine")]["spec"]["ingress"]
                assert [rule for rule in engine_rules if "ports" not in rule] == group
                now["spec"]["ingress"] += group
        assert now == obj, key
    added = {kind for kind, _ in index}
    assert added >= {"ServiceAccount", "Role", "RoleBinding", "Service", "Deployment", "NetworkPolicy"}
    assert all(n.endswith(("-router", "-engine")) for _, n in index)


def test_router_settings_reach_the_command() -> None:
    objects = _render(_spec(router={"policy": "least-load", "retries": 0, "replicas": 1}))
    deployment = _by(objects, "Deployment", "m-router")
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--policy") + 1] == "least-load" and command[command.index("--retries") + 1] == "0"
    assert "--registry" not in command
    assert deployment["spec"]["replicas"] == 1
    assert not any(o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == "m-router" for o in objects)
    text = yaml.safe_dump(objects)
    assert "ClusterRole" not in text


def test_the_router_command_parses_with_the_router_cli() -> None:
    """Every option the pod passes is one `vllm-fleet router` takes (the pod would crash-loop otherwise)."""
    import typer.main

    from vllm_fleet.cli.router import router as router_command

    plan = load_plan(EXAMPLES[0], "production")
    command = _by(render(plan), "Deployment", f"{plan.name}-router")["spec"]["template"]["spec"]["containers"][0]
    app = typer.Typer(add_completion=False)
    app.command()(router_command)
    click_command = typer.main.get_command(app)
    context = click_command.make_context("router", command["command"][2:])
    assert context.params["shutdown_timeout"] == plan.derived["router_shutdown_timeout_s"].value
    assert context.params["discover_k8s"] == f"{plan.spec.kubernetes.namespace}/{plan.name}-engine:8000"


def test_a_registry_with_a_password_comes_from_a_secret_never_the_manifest() -> None:
    from vllm_fleet.errors import SpecError
    from vllm_fleet.spec import parse_spec

    with pytest.raises(SpecError, match=r"router\.registry carries a password") as info:
        parse_spec(_spec(router={"registry": "postgresql://fleet:hunter2@db:5432/fleet"}))
    assert "hunter2" not in str(info.value.message) + str(info.value.details or "") + str(info.value.fix or "")
    objects = _render(
        _spec(router={"registry": "postgresql://fleet@db/fleet"}, kubernetes={"secrets": {"registry": "fleet-db"}})
    )
    container = _by(objects, "Deployment", "m-router")["spec"]["template"]["spec"]["containers"][0]
    assert "--registry" not in container["command"]  # the Secret's URL (with its password) wins
    [env] = [e for e in container["env"] if e["name"] == "VLLM_FLEET_REGISTRY"]
    assert env["valueFrom"] == {"secretKeyRef": {"name": "fleet-db", "key": "VLLM_FLEET_REGISTRY"}}
    plain = _render(_spec(router={"registry": "postgresql://fleet@db/fleet"}))
    command = _by(plain, "Deployment", "m-router")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--registry") + 1] == "postgresql://fleet@db/fleet"
