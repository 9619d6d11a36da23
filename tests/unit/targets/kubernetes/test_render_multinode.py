"""Multi-node serving (issue 16): resources.nodes > 1 renders a LeaderWorkerSet, vLLM on Ray. Tested here:
the rendering and its schemas (the CRD subset, each pod template strictly as a v1 PodTemplate). Not tested:
a multi-node run (no GPUs, no LWS controller, no Ray cluster on these machines)."""

from __future__ import annotations

import copy

import jsonschema
import pytest

from tests import ROOT
from tests.unit.targets.kubernetes.test_render import _render, _spec, validate
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import load_plan
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.manifests.render import render

EXAMPLE = ROOT / "examples" / "gke-multinode.yaml"


def _lws(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "LeaderWorkerSet")


@pytest.mark.parametrize("env", [None, "production"])
def test_the_example_renders_a_leader_worker_set(env: str | None) -> None:
    plan = load_plan(EXAMPLE, env)
    objects = render(plan)
    assert not any(o["kind"] == "Deployment" and o["metadata"]["name"] == plan.name for o in objects)
    for obj in objects:
        validate(obj)
    lws = _lws(objects)["spec"]
    group = lws["leaderWorkerTemplate"]
    assert group["size"] == 2 and group["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = group["leaderTemplate"]["spec"]["containers"][0]
    script, args = leader["command"][2], leader["args"]
    assert script.startswith("ray start --head --port=6379 && exec python3 -m vllm.entrypoints.openai.api_server")
    pairs = dict(zip(args[1::2], args[2::2], strict=False))
    assert pairs["--tensor-parallel-size"] == "8" and pairs["--pipeline-parallel-size"] == "2"
    assert pairs["--distributed-executor-backend"] == "ray"
    assert leader["readinessProbe"]["httpGet"]["path"] == "/health" and leader["lifecycle"]["preStop"]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8"  # T x P / nodes = 8 x 2 / 2
    worker = group["workerTemplate"]["spec"]["containers"][0]
    assert '--address="$LWS_LEADER_ADDRESS:6379" --block' in worker["command"][2]
    assert "readinessProbe" not in worker and worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    for template in (group["leaderTemplate"], group["workerTemplate"]):
        pod = template["spec"]
        assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
        assert pod["terminationGracePeriodSeconds"] == plan.termination_grace_s
    # the router (on by default) follows NAME-engine, which lists the leaders only
    engine = next(o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == f"{plan.name}-engine")
    assert engine["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    pdb = any(o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == plan.name for o in objects)
    assert pdb == (env == "production")
    policy = next(o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == f"{plan.name}-engine")
    assert any("ports" not in rule for rule in policy["spec"]["ingress"])  # Ray and NCCL between the group


def test_without_the_router_the_client_service_selects_the_leaders() -> None:
    plan = copy.deepcopy(load_plan(EXAMPLE, "production"))
    object.__setattr__(plan.spec.router, "enabled", False)
    objects = render(plan)
    assert not any(o["metadata"]["name"].endswith(("-router", "-engine")) for o in objects)
    (service,) = [o for o in objects if o["kind"] == "Service"]
    assert service["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy"]
    assert "leaderworkerset.sigs.k8s.io/worker-index" not in policy["spec"]["podSelector"]["matchLabels"]
    assert any("ports" not in rule for rule in policy["spec"]["ingress"])


def test_the_crd_subset_catches_a_bad_leader_worker_set() -> None:
    bad = copy.deepcopy(_lws(render(load_plan(EXAMPLE))))
    bad["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Always"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(_lws(render(load_plan(EXAMPLE))))
    bad["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["bogus"] = 1
    with pytest.raises(Exception, match="bogus"):
        validate(bad)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"engine": {"tensor_parallel_size": 3, "pipeline_parallel_size": 1}, "resources": {"gpus": 1, "nodes": 2}},
         "do not divide evenly over resources.nodes=2"),
        ({"engine": {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}, "resources": {"gpus": 8, "nodes": 2}},
         "set resources.gpus: 4"),
        ({"target": "local", "engine": {"tensor_parallel_size": 2}, "resources": {"gpus": 1, "nodes": 2}},
         "only target kubernetes"),
        ({"engine": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}, "resources": {"gpus": 2}},
         "pipeline_parallel_size=2 needs 4 GPUs"),
    ],
)  # fmt: skip
def test_uneven_parallelism_is_a_spec_error_naming_the_fields(sections: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(_spec(**sections))


def test_autoscaling_targets_the_leader_worker_set() -> None:
    text = _spec(engine={"tensor_parallel_size": 2, "pipeline_parallel_size": 2},
                 resources={"gpus": 2, "nodes": 2}, storage={"profile": "nfs", "nfs_server": "10.0.0.2"},
                 scaling={"mode": "hpa", "max_replicas": 3})  # fmt: skip
    objects = _render(text)
    hpa = next(o for o in objects if o["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
    assert "replicas" not in _lws(objects)["spec"]
    rules = next(o for o in objects if o["kind"] == "Rules")["spec"]["groups"][0]["rules"]
    ready = next(r for r in rules if r["alert"] == "VLLMNoReplicaReady")
    assert "kube_statefulset_status_replicas_ready" in ready["expr"]
