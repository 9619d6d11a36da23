"""gateway.mode inference-pool (issue 16): an InferencePool and its endpoint picker behind the HTTPRoute.

Tested here: the rendering, the InferencePool against its CRD subset, every other object strictly against
the Kubernetes schemas, the references between them (route -> pool -> picker Service -> picker pod; pool ->
engine pods), the spec rules; the checkov scan covers the example (test_render_security). Not tested: a
gateway that implements the extension, the picker's image or its scoring (none runs on these machines).
"""

from __future__ import annotations

import copy

import jsonschema
import pytest
import yaml

from tests import ROOT
from tests.unit.targets.kubernetes.test_render import _render, _spec, validate
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import load_plan
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.cluster.objects import APPLY_ORDER, crd_name
from vllm_fleet.targets.kubernetes.manifests.render import render
from vllm_fleet.versions import EPP_IMAGE

EXAMPLE = ROOT / "examples" / "gke-inference-gateway.yaml"
POOL = {"enabled": True, "mode": "inference-pool"}


def _by(objects: list[dict], kind: str, name: str) -> dict:
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("env", [None, "production"])
def test_the_example_routes_through_an_inference_pool_and_its_picker(env: str | None) -> None:
    plan = load_plan(EXAMPLE, env)
    objects = render(plan)
    for obj in objects:
        validate(obj)
    name, epp, port = plan.name, f"{plan.name}-epp", plan.spec.kubernetes.port
    assert not any(o["metadata"]["name"].endswith(("-router", "-engine")) for o in objects)  # no router
    # the route -> the pool
    (backend,) = _by(objects, "HTTPRoute", name)["spec"]["rules"][0]["backendRefs"]
    assert backend == {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": name}
    pool = _by(objects, "InferencePool", name)
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    # the pool -> the engine pods on their port, never the picker's pods
    engine_pod = _by(objects, "Deployment", name)["spec"]["template"]
    epp_pod = _by(objects, "Deployment", epp)["spec"]["template"]
    selector = pool["spec"]["selector"]["matchLabels"]
    assert _matches(selector, engine_pod["metadata"]["labels"])
    assert not _matches(selector, epp_pod["metadata"]["labels"])
    vllm = engine_pod["spec"]["containers"][0]
    assert pool["spec"]["targetPorts"] == [{"number": port}]
    assert {"name": "http", "containerPort": port, "protocol": "TCP"} in vllm["ports"]
    # the pool -> the picker's Service port -> the picker's container port
    ref = pool["spec"]["endpointPickerRef"]
    assert ref == {"name": epp, "port": {"number": 9002}, "failureMode": "FailOpen"}
    service = _by(objects, "Service", epp)["spec"]
    assert _matches(service["selector"], epp_pod["metadata"]["labels"])
    (ext_proc,) = [p for p in service["ports"] if p["port"] == ref["port"]["number"]]
    (container,) = epp_pod["spec"]["containers"]
    assert ext_proc["targetPort"] in {p["name"] for p in container["ports"]}
    args = container["args"]
    assert args[args.index("--pool-name") + 1] == name
    assert args[args.index("--pool-namespace") + 1] == plan.spec.kubernetes.namespace
    assert container["image"] == plan.spec.gateway.epp_image == EPP_IMAGE
    assert container["readinessProbe"]["grpc"]["port"] in {p["containerPort"] for p in container["ports"]}
    # GKE health-checks the pool's pods on vLLM's /health
    health = _by(objects, "HealthCheckPolicy", name)["spec"]
    assert health["targetRef"] == {"group": "inference.networking.k8s.io", "kind": "InferencePool", "name": name}
    assert health["default"]["config"]["httpHealthCheck"] == {"requestPath": "/health", "port": port}
    # the picker waits for the pool's pods to finish as long as they may take
    assert epp_pod["spec"]["terminationGracePeriodSeconds"] == plan.termination_grace_s


def test_the_picker_reads_its_config_from_the_config_map() -> None:
    objects = render(load_plan(EXAMPLE))
    pod = _by(objects, "Deployment", "llama-8b-epp")["spec"]["template"]["spec"]
    args = pod["containers"][0]["args"]
    path = args[args.index("--config-file") + 1]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    data = _by(objects, "ConfigMap", volume["configMap"]["name"])["data"]
    config = yaml.safe_load(data[path.rsplit("/", 1)[1]])
    assert config["kind"] == "EndpointPickerConfig"
    types = {p["type"] for p in config["plugins"]}
    assert {"queue-scorer", "kv-cache-utilization-scorer", "prefix-cache-scorer"} <= types
    for profile in config["schedulingProfiles"]:
        assert {p["pluginRef"] for p in profile["plugins"]} <= types


def test_the_picker_may_only_read_in_its_namespace() -> None:
    plan = load_plan(EXAMPLE, "production")
    objects = render(plan)
    role = _by(objects, "Role", "llama-8b-epp")
    assert role["metadata"]["namespace"] == plan.spec.kubernetes.namespace
    assert {verb for rule in role["rules"] for verb in rule["verbs"]} == {"get", "list", "watch"}
    assert "inferencepools" in {r for rule in role["rules"] for r in rule["resources"]}
    binding = _by(objects, "RoleBinding", "llama-8b-epp")
    assert (
        binding["subjects"][0]["name"]
        == _by(objects, "Deployment", "llama-8b-epp")["spec"]["template"]["spec"]["serviceAccountName"]
    )
    assert not any(o["kind"] in ("ClusterRole", "ClusterRoleBinding") for o in objects)


def test_the_gateway_reaches_the_engines_and_the_picker() -> None:
    """No router: the engines' NetworkPolicy lets the Gateway's proxies in, and the picker's the same peers."""
    plan = load_plan(EXAMPLE)
    objects = render(plan)
    engine_pods = _by(objects, "Deployment", plan.name)["spec"]["template"]["metadata"]["labels"]
    engines = _by(objects, "NetworkPolicy", plan.name)["spec"]
    assert _matches(engines["podSelector"]["matchLabels"], engine_pods)
    cidrs = [{"ipBlock": {"cidr": c}} for c in plan.spec.kubernetes.allowed_cidrs]
    assert cidrs and all(c in engines["ingress"][0]["from"] for c in cidrs)
    picker = _by(objects, "NetworkPolicy", "llama-8b-epp")["spec"]
    assert picker["ingress"][0]["from"] == engines["ingress"][0]["from"]
    assert {"protocol": "TCP", "port": 9002} in picker["ingress"][0]["ports"]


def test_service_mode_is_the_default_and_renders_as_before() -> None:
    default = _render(_spec(gateway={"enabled": True}))
    assert _render(_spec(gateway={"enabled": True, "mode": "service"})) == default
    assert not any(o["kind"] == "InferencePool" or o["metadata"]["name"].endswith("-epp") for o in default)
    (backend,) = _by(default, "HTTPRoute", "m")["spec"]["rules"][0]["backendRefs"]
    assert backend == {"name": "m", "port": 8000}


def test_the_router_and_the_picker_are_not_both_rendered() -> None:
    with pytest.raises(SpecError, match=r"set router\.enabled: false"):
        parse_spec(_spec(gateway=POOL))
    # without a Gateway, the mode renders nothing and asks nothing
    objects = _render(_spec(gateway={"enabled": False, "mode": "inference-pool"}))
    assert not any(o["kind"] in ("InferencePool", "HTTPRoute") for o in objects)


def test_a_multi_node_pool_holds_the_leaders_only() -> None:
    text = _spec(engine={"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
                 resources={"gpus": 2, "nodes": 2}, storage={"profile": "nfs", "nfs_server": "10.0.0.2"},
                 gateway=POOL, router={"enabled": False})  # fmt: skip
    objects = _render(text)
    pool = _by(objects, "InferencePool", "m")
    validate(pool)
    assert pool["spec"]["selector"]["matchLabels"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_the_failure_mode_and_image_come_from_the_spec() -> None:
    objects = _render(_spec(gateway=POOL | {"epp_failure_mode": "FailClose", "epp_image": "example.com/epp:v9"},
                            router={"enabled": False}))  # fmt: skip
    assert _by(objects, "InferencePool", "m")["spec"]["endpointPickerRef"]["failureMode"] == "FailClose"
    assert _by(objects, "Deployment", "m-epp")["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "example.com/epp:v9"
    )
    with pytest.raises(SpecError, match="epp_failure_mode"):
        parse_spec(_spec(gateway=POOL | {"epp_failure_mode": "Open"}, router={"enabled": False}))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda s: s["endpointPickerRef"].update(failureMode="Open"),
        lambda s: s.pop("endpointPickerRef"),
        lambda s: s.update(targetPorts=[]),
        lambda s: s["targetPorts"][0].update(number=0),
        lambda s: s["selector"].update(matchExpressions=[]),
        lambda s: s["selector"]["matchLabels"].update(bad="not a label value!"),
    ],
)
def test_the_crd_subset_catches_a_bad_pool(mutate) -> None:
    bad = copy.deepcopy(_by(render(load_plan(EXAMPLE)), "InferencePool", "llama-8b"))
    mutate(bad["spec"])
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_up_knows_the_pool_crd_and_applies_it_before_the_route() -> None:
    assert crd_name("inference.networking.k8s.io", "InferencePool") == "inferencepools.inference.networking.k8s.io"
    assert APPLY_ORDER.index("InferencePool") < APPLY_ORDER.index("HTTPRoute")
