"""`vllm-fleet render`: every example, every environment, valid against real Kubernetes schemas (issue 4)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests import ROOT
from vllm_fleet import engine
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import load_plan, resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.kubernetes.manifests.bake import bake
from vllm_fleet.targets.kubernetes.manifests.render import render, to_yaml, write_dir

EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if p.name != "quickstart.yaml")
CRDS = ROOT / "tests" / "data" / "crds"
# The oldest version we promise (native sidecars are on by default from 1.29) and the newest the validator knows.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
CUSTOM_KINDS = {"Gateway", "HTTPRoute", "PodMonitoring", "ServiceMonitor", "ScaledObject", "HealthCheckPolicy"}
CUSTOM_KINDS |= {"PrometheusRule", "Rules", "LeaderWorkerSet", "InferencePool"}  # issue 16


def _envs(path: Path) -> list[str | None]:
    return [None, *sorted(yaml.safe_load(path.read_text()).get("environments", {}))]


CASES = [pytest.param(p, env, id=f"{p.stem}-{env or 'base'}") for p in EXAMPLES for env in _envs(p)]


def _objects(path: Path, env: str | None) -> list[dict]:
    plan = load_plan(path, env)
    extra = bake(plan).objects if plan.spec.storage.profile == "pd-preloaded" else []
    return render(plan) + extra


def _crd_schemas() -> dict[tuple[str, str], dict]:
    schemas = {}
    for path in CRDS.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            spec = doc["spec"]
            for version in spec["versions"]:
                api = f"{spec['group']}/{version['name']}"
                schemas[(api, spec["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return schemas


CRD_SCHEMAS = _crd_schemas()


def validate(obj: dict) -> None:
    """Core kinds: kubernetes-validate strict, both versions. Custom kinds: the vendored CRD schema."""
    if obj["kind"] in CUSTOM_KINDS:
        jsonschema.validate(obj, CRD_SCHEMAS[(obj["apiVersion"], obj["kind"])])
        for template in _pod_templates(obj):  # a LeaderWorkerSet's pods: corev1.PodTemplateSpec, strictly
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(wrapped, version, strict=True)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def _pod_templates(obj: dict) -> list[dict]:
    """The pod templates of a workload: a Deployment's or Job's, a LeaderWorkerSet's leader and worker."""
    if obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        return [lwt["leaderTemplate"], lwt["workerTemplate"]]
    if obj["kind"] in ("Deployment", "Job"):
        return [obj["spec"]["template"]]
    return []


def test_there_is_an_example_per_profile() -> None:
    profiles = {load_plan(p).spec.storage.profile for p in EXAMPLES}
    assert profiles == {"pvc-init", "pd-preloaded", "nfs", "gcsfuse", "local-nvme"}


@pytest.mark.parametrize(("path", "env"), CASES)
def test_every_object_validates(path: Path, env: str | None) -> None:
    for obj in _objects(path, env):
        validate(obj)


def test_examples_cover_every_custom_kind() -> None:
    kinds = {obj["kind"] for path in EXAMPLES for env in _envs(path) for obj in _objects(path, env)}
    assert kinds >= CUSTOM_KINDS | {"HorizontalPodAutoscaler", "PodDisruptionBudget", "StorageClass", "Job"}


@pytest.mark.parametrize(
    ("kind", "mutate"),
    [
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(unknownField=1)),
        ("Deployment", lambda o: o["spec"]["strategy"]["rollingUpdate"].update(maxSurg=0)),
        ("Service", lambda o: o["spec"]["ports"][0].update(port="eighty")),
        ("ScaledObject", lambda o: o["spec"].update(minReplicas=1)),
        ("PodMonitoring", lambda o: o["spec"]["endpoints"][0].update(scheme="http", bogus=True)),
        ("PodMonitoring", lambda o: o["spec"]["endpoints"][0].pop("interval")),
        ("ServiceMonitor", lambda o: o["spec"].pop("endpoints")),
        ("HTTPRoute", lambda o: o["spec"]["rules"][0]["matches"][0]["path"].update(type="Prefix")),
        ("Gateway", lambda o: o["spec"].pop("gatewayClassName")),
        ("HealthCheckPolicy", lambda o: o["spec"]["default"]["config"].update(type="http")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(for_="10m")),
        ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "ten minutes"})),
        ("Rules", lambda o: o["spec"]["groups"][0].pop("interval")),
        ("InferencePool", lambda o: o["spec"]["endpointPickerRef"].update(failureMode="open")),
    ],
)
def test_validation_is_strict_enough_to_fail(kind: str, mutate) -> None:
    objects = {o["kind"]: o for p in EXAMPLES for o in _objects(p, None)}
    bad = copy.deepcopy(objects[kind])
    mutate(bad)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(bad)


def test_rendering_is_byte_identical_across_processes(tmp_path: Path) -> None:
    outputs = set()
    command = [
        sys.executable,
        "-m",
        "vllm_fleet.cli",
        "render",
        str(ROOT / "examples" / "do-nfs.yaml"),
        "-e",
        "production",
    ]
    for seed in ("1", "2"):
        run = subprocess.run(
            command,
            capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        outputs.add(run.stdout)
    assert len(outputs) == 1 and "kind: Deployment" in outputs.pop()
    first = {p.name: p.read_bytes() for p in write_dir(_objects(EXAMPLES[0], None), tmp_path / "a")}
    second = {p.name: p.read_bytes() for p in write_dir(_objects(EXAMPLES[0], None), tmp_path / "b")}
    assert first == second and "kustomization.yaml" in first


def test_no_secret_value_reaches_the_manifests(monkeypatch: pytest.MonkeyPatch) -> None:
    canaries = {
        "HF_TOKEN": "hf_canary_5e1c7b",
        "AWS_SECRET_ACCESS_KEY": "aws-canary-9f3a",
        "AWS_ACCESS_KEY_ID": "AKIACANARY0001",
        "GOOGLE_APPLICATION_CREDENTIALS": "/tmp/canary-gcp.json",
    }
    for key, value in canaries.items():
        monkeypatch.setenv(key, value)
    text = "".join(to_yaml(_objects(p, env)) for p in EXAMPLES for env in _envs(p))
    for value in canaries.values():
        assert value not in text
    assert "secretKeyRef" in text  # credentials travel as references


def _deployment(objects: list[dict]) -> dict:
    return next(o for o in objects if o["kind"] == "Deployment")


def _engine_pod(objects: list[dict]) -> dict:
    """The pod template serving HTTP: the Deployment's, or a LeaderWorkerSet's leader (issue 16)."""
    workload = next(o for o in objects if o["kind"] in ("Deployment", "LeaderWorkerSet"))
    return _pod_templates(workload)[0]


def _containers(pod: dict) -> list[dict]:
    return [*pod.get("initContainers", []), *pod["containers"]]


@pytest.mark.parametrize(("path", "env"), CASES)
def test_secure_defaults_on_every_pod(path: Path, env: str | None) -> None:
    for template in [t for obj in _objects(path, env) for t in _pod_templates(obj)]:
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in _containers(pod):
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
            assert sc["readOnlyRootFilesystem"] is True
            tag = container["image"].rsplit("/", 1)[-1]
            assert ":" in tag and not tag.endswith(":latest")


@pytest.mark.parametrize(("path", "env"), CASES)
def test_engine_is_the_plan(path: Path, env: str | None) -> None:
    plan = load_plan(path, env)
    objects = render(plan)
    pod = _engine_pod(objects)["spec"]
    vllm = pod["containers"][0]
    model_dir = plan.derived["pod_model_dir"].value
    shutdown = plan.spec.availability.shutdown_timeout_s
    assert vllm["args"][-len(plan.pod_engine_args) :] == engine.vllm_args(
        plan.spec, model_dir=model_dir, port=plan.spec.kubernetes.port, shutdown_timeout_s=shutdown
    )
    assert vllm["args"][vllm["args"].index("--shutdown-timeout") + 1] == str(shutdown)
    assert pod["terminationGracePeriodSeconds"] == plan.termination_grace_s
    probe = vllm["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= plan.startup_budget_s
    assert vllm["readinessProbe"]["httpGet"]["path"] == vllm["livenessProbe"]["httpGet"]["path"] == "/health"
    drain = vllm["lifecycle"]["preStop"]["exec"]["command"]
    assert drain[:2] == ["vllm-fleet", "drain"] and drain[-1] == str(plan.spec.availability.drain_timeout_s)
    # The grace period covers the preStop drain and vLLM's own shutdown after it, with a margin.
    assert plan.spec.availability.drain_timeout_s + shutdown < pod["terminationGracePeriodSeconds"]
    workload = next(o for o in objects if o["kind"] in ("Deployment", "LeaderWorkerSet"))
    if workload["kind"] == "Deployment":
        assert workload["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    else:
        assert workload["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 0, "maxUnavailable": 1}
    many = int(plan.derived["max_replicas"].value) > 1
    assert ("affinity" in pod) == many
    assert any(o["kind"] == "PodDisruptionBudget" and o["metadata"]["name"] == plan.name for o in objects) == many
    shm = any(m["mountPath"] == "/dev/shm" for m in vllm["volumeMounts"])
    assert shm == (plan.spec.engine.tensor_parallel_size > 1 or plan.spec.resources.nodes > 1)
    if plan.spec.resources.gpus:
        assert vllm["resources"]["limits"]["nvidia.com/gpu"] == str(plan.spec.resources.gpus)
        assert pod["nodeSelector"] and pod["tolerations"][0]["key"] == "nvidia.com/gpu"


def _spec(**sections) -> str:
    base = {
        "name": "m",
        "model": {"source": "hf://org/model", "size_gb": 2},
        "target": "kubernetes",
        "kubernetes": {"namespace": "llm"},
    }
    for key, value in sections.items():
        base[key] = base.get(key, {}) | value if isinstance(value, dict) else value
    return yaml.safe_dump(base)


def _render(text: str) -> list[dict]:
    return render(resolve(parse_spec(text)))


def test_profiles_render_their_storage() -> None:
    pd = _render(_spec(storage={"profile": "pd-preloaded", "volume_handle": "projects/p/zones/z-a/disks/d"}))
    pv = next(o for o in pd if o["kind"] == "PersistentVolume")["spec"]
    assert pv["mountOptions"] == ["read_ahead_kb=4096"] and pv["accessModes"] == ["ReadOnlyMany"]
    assert pv["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["z-a"]
    pvc = next(o for o in pd if o["kind"] == "PersistentVolumeClaim")["spec"]
    assert pvc["volumeName"] == "m-weights"
    assert [c["name"] for c in _deployment(pd)["spec"]["template"]["spec"]["initContainers"]] == ["prefetch"]

    nfs = _render(_spec(storage={"profile": "nfs", "nfs_server": "10.0.0.2", "prefetch": False}))
    init = _deployment(nfs)["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["wait-for-model"] and ".vllm-fleet/COMPLETE" in init[0]["command"][-1]
    assert any(o["kind"] == "Job" for o in nfs)

    fuse = _render(_spec(model={"source": "gs://bucket/models/m"}, storage={"profile": "gcsfuse", "file_cache_gib": 8}))
    pod = _deployment(fuse)["spec"]["template"]
    assert pod["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"
    attrs = pod["spec"]["volumes"][0]["csi"]["volumeAttributes"]
    assert attrs["bucketName"] == "bucket" and "only-dir=models/m" in attrs["mountOptions"]
    assert "file-cache:enable-parallel-downloads:true" in attrs["mountOptions"]

    nvme = _render(_spec(kubernetes={"platform": "gke"}, storage={"profile": "local-nvme"}))
    pod = _deployment(nvme)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"cloud.google.com/gke-local-nvme-ssd": "true"}
    assert pod["volumes"][0]["hostPath"]["type"] == "DirectoryOrCreate"

    sidecar = _deployment(_render(_spec()))["spec"]["template"]["spec"]["initContainers"][-1]
    assert sidecar["name"] == "prefetch" and sidecar["restartPolicy"] == "Always"


def test_gpu_platforms_pick_their_node_labels() -> None:
    res = {"gpus": 1, "gpu_type": "nvidia-h100-80gb"}
    selectors = {
        platform: _deployment(_render(_spec(resources=res, kubernetes={"platform": platform})))["spec"]["template"][
            "spec"
        ]["nodeSelector"]
        for platform in ("gke", "digitalocean", "generic")
    }
    assert selectors["gke"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert selectors["digitalocean"]["doks.digitalocean.com/gpu-model"] == "h100"
    assert selectors["generic"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}


def test_a_local_source_cannot_be_staged_by_a_pod(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="a pod cannot read it"):
        render(resolve(parse_spec(_spec(model={"source": "file:///models/m"}))))


def test_bake_needs_pd_preloaded_and_prints_commands() -> None:
    with pytest.raises(SpecError, match="pd-preloaded"):
        bake(resolve(parse_spec(_spec())))
    plan = load_plan(ROOT / "examples" / "gke-pd-preloaded.yaml")
    result = bake(plan)
    assert [o["kind"] for o in result.objects] == ["ServiceAccount", "PersistentVolumeClaim", "Job", "NetworkPolicy"]
    job_cmd = result.objects[2]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert job_cmd[-1] == plan.derived["pod_model_dir"].value or plan.derived["pod_model_dir"].value in job_cmd
    assert sum("gcloud compute disks create" in c for c in result.commands) == len(plan.spec.storage.zones)


def test_cli_render_writes_a_kustomize_dir(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vllm_fleet.cli import app

    result = CliRunner().invoke(app, ["render", str(EXAMPLES[0]), "-e", "production", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    kustomization = yaml.safe_load((tmp_path / "kustomization.yaml").read_text())
    assert all((tmp_path / name).is_file() for name in kustomization["resources"])
    bad = CliRunner().invoke(app, ["render", str(EXAMPLES[0]), "-e", "producton"])
    assert bad.exit_code == 2 and "did you mean 'production'" in bad.output


def test_the_in_cluster_verify_job_is_valid_and_targets_the_service() -> None:
    from vllm_fleet.targets.kubernetes.manifests.verify import latency_job

    plan = load_plan(ROOT / "examples" / "gke-pvc-init.yaml", "production")
    job = latency_job(plan, "qwen-7b-verify-abc123")
    validate(job)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["vllm-fleet", "verify", "http://qwen-7b.llm-prod.svc:8000"] and "--json" in command
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_an_image_cache_disk_selects_its_nodes_and_bake_images_prints_the_commands() -> None:
    from typer.testing import CliRunner

    from vllm_fleet.cli import app
    from vllm_fleet.targets.kubernetes.manifests.bake import bake_images

    path = ROOT / "examples" / "gke-pvc-init.yaml"
    plan = load_plan(path, "production")
    selector = _deployment(render(plan))["spec"]["template"]["spec"]["nodeSelector"]
    key = "cloud.google.com.node-restriction.kubernetes.io/gke-secondary-boot-disk-vllm-fleet-0-1-0-vllm0-32-0"
    assert selector[key] == "CONTAINER_IMAGE_CACHE.my-project"
    assert selector["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert key not in _deployment(render(load_plan(path)))["spec"]["template"]["spec"]["nodeSelector"]
    commands = bake_images(plan).commands
    builder = next(c for c in commands if c.startswith("go run ./cli"))
    assert f"--container-image={plan.spec.kubernetes.image}" in builder and "--image-name=vllm-fleet-0-1-0" in builder
    pool = next(c for c in commands if c.startswith("gcloud container node-pools create"))
    assert "--secondary-boot-disk=disk-image=projects/my-project/global/images/vllm-fleet-0-1-0-vllm0-32-0," \
           "mode=CONTAINER_IMAGE_CACHE" in pool and "--enable-image-streaming" in pool  # fmt: skip
    assert "type=nvidia-l4,count=1" in pool and any(key in c for c in commands)
    shown = CliRunner().invoke(app, ["bake", str(path), "-e", "production", "--images"])
    assert shown.exit_code == 0 and "CONTAINER_IMAGE_CACHE" in shown.output
    missing = CliRunner().invoke(app, ["bake", str(path), "--images"])
    assert missing.exit_code == 2 and "kubernetes.image_cache_disk" in missing.output
    with pytest.raises(SpecError, match="image_cache_disk"):
        parse_spec(_spec(kubernetes={"image_cache_disk": "my-image"}))
