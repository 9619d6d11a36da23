"""Plan for Kubernetes: new spec sections, GPU memory fit, probe budgets and lint (issue 4)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from vllm_fleet.cli import app
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import resolve
from vllm_fleet.spec import parse_spec

BASE = {
    "name": "m",
    "model": {"source": "hf://org/model", "size_gb": 16, "parameters_b": 8,
              "shape": {"layers": 32, "kv_heads": 8, "head_dim": 128}},
    "target": "kubernetes",
    "resources": {"gpus": 1, "gpu_type": "nvidia-l4"},
    "engine": {"max_model_len": 2048, "max_num_seqs": 8},
}  # fmt: skip


def _text(**over: object) -> str:
    spec = json.loads(json.dumps(BASE))
    for key, value in over.items():
        spec[key] = spec.get(key, {}) | value if isinstance(value, dict) else value
    return yaml.safe_dump(spec)


def _plan(**over: object):
    return resolve(parse_spec(_text(**over)))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"storage": {"profle": "nfs"}}, "storage.profle: unknown key (did you mean 'profile'?)"),
        ({"storage": {"profile": "efs"}}, "storage.profile"),
        ({"storage": {"profile": "nfs"}}, "needs storage.nfs_server"),
        ({"storage": {"profile": "pd-preloaded"}}, "needs storage.volume_handle"),
        ({"storage": {"profile": "gcsfuse"}}, "use a gs://BUCKET/PATH source"),
        ({"storage": {"create_storage_class": True}}, "needs storage.storage_class"),
        ({"storage": {"size": "100GB"}}, "storage.size"),
        ({"scaling": {"mode": "hpa", "min_replicas": 3, "max_replicas": 2}}, "max_replicas=2 is below min_replicas=3"),
        ({"scaling": {"mode": "vpa"}}, "scaling.mode"),
        ({"kubernetes": {"namespace": "LLM_prod"}}, "not a valid Kubernetes name"),
        ({"kubernetes": {"platfrom": "gke"}}, "did you mean 'platform'?"),
        ({"gateway": {"enabled": True, "port": 0}}, "gateway.port"),
        ({"monitoring": {"scraper": "datadog"}}, "monitoring.scraper"),
        ({"model": {"shape": {"layers": 0, "kv_heads": 1, "head_dim": 1}}}, "model.shape.layers"),
    ],
)
def test_spec_errors_name_the_field(over: dict, message: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_text(**over))
    assert message in str(err.value)


def test_overlay_errors_name_the_environment() -> None:
    with pytest.raises(SpecError, match=r"environments\.production\.scaling\.mode"):
        parse_spec(_text(environments={"production": {"scaling": {"mode": "auto"}}}))


def test_gpu_fit_is_computed_and_explained() -> None:
    plan = _plan()
    fit = plan.derived["gpu_fit"].value
    # 8e9 x 2 B = 14.9 GiB + KV 2x32x8x128x2 B x 2048 x 8 = 2 GiB, of 24 x 0.9 = 21.6 GiB usable
    assert fit == pytest.approx((8e9 * 2 + 2 * 32 * 8 * 128 * 2 * 2048 * 8) / (24 * 2**30 * 0.9), abs=0.01)
    assert "KV cache" in plan.derived["gpu_memory_need_gib"].why


def test_gpu_fit_errors_before_anyone_waits_for_an_oom() -> None:
    with pytest.raises(SpecError, match="does not fit the GPU memory") as err:
        _plan(engine={"max_model_len": 32768, "max_num_seqs": 64})
    assert "max_num_seqs" in (err.value.fix or "")
    assert _plan(engine={"max_model_len": 32768, "max_num_seqs": 64, "tensor_parallel_size": 8},
                 resources={"gpus": 8, "gpu_type": "nvidia-h100-80gb"}).derived["gpu_fit"].value < 1  # fmt: skip


def test_gpu_fit_warns_when_tight_and_says_when_unchecked() -> None:
    tight = _plan(engine={"max_model_len": 4096, "max_num_seqs": 12})
    assert 0.9 < tight.derived["gpu_fit"].value <= 1
    assert any("GPU memory is tight" in w for w in tight.lint)
    unknown = _plan(resources={"gpus": 1, "gpu_type": "nvidia-x9000"})
    assert "gpu_fit" not in unknown.derived and any("unknown resources.gpu_type" in w for w in unknown.lint)
    no_shape = _plan(model={"shape": None})
    assert no_shape.derived["gpu_fit"].value is None and "model.shape" in no_shape.derived["gpu_fit"].why


def test_gpu_fit_reads_a_local_config(tmp_path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    config = {"num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576,
              "torch_dtype": "bfloat16"}  # fmt: skip
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors").write_bytes(b"\0" * 1000)
    plan = _plan(model={"source": str(model), "size_gb": None, "parameters_b": 0.135, "shape": None})
    assert "30 layers x 3 kv heads x 64" in plan.derived["gpu_memory_need_gib"].why


def test_startup_budget_uses_measured_bandwidth_and_override() -> None:
    assumed = _plan().startup_budget_s
    measured = _plan(storage={"read_bandwidth_mb_s": 2000}).startup_budget_s
    assert measured < assumed
    assert "storage.read_bandwidth_mb_s" in _plan(storage={"read_bandwidth_mb_s": 2000}).derived["startup_budget_s"].why
    short = _plan(kubernetes={"startup_timeout_s": 60})
    assert short.startup_budget_s == 60 and short.derived["startup_failure_threshold"].value == 6
    assert any("shorter than the expected load" in w for w in short.lint)


@pytest.mark.parametrize(
    ("over", "warning"),
    [
        ({"replicas": 2, "availability": {"pod_disruption_budget": False}}, "without a PodDisruptionBudget"),
        ({"replicas": 3}, "ReadWriteOnce cache with 3 replicas"),
        ({"scaling": {"mode": "keda", "max_replicas": 4}}, "ReadWriteOnce cache with 4 replicas"),
        ({"kubernetes": {"image": "vllm/vllm-openai"}}, "is not pinned"),
        ({"kubernetes": {"image": "vllm/vllm-openai:latest"}}, "is not pinned"),
        ({"kubernetes": {"image": "vllm/vllm-openai:v0.11.0"}}, "has no vllm-fleet in it"),
        ({"gateway": {"enabled": True}}, "allowed_cidrs is empty"),
        ({"kubernetes": {"image": "reg.example/vllm-fleet:0.1.0-vllm0.11.0"}}, "runs vLLM 0.11.0"),
    ],
)
def test_lint_warnings(over: dict, warning: str) -> None:
    assert any(warning in w for w in _plan(**over).lint), _plan(**over).lint


def test_no_lint_for_a_sound_spec() -> None:
    assert _plan(replicas=3, storage={"profile": "nfs", "nfs_server": "10.0.0.2"}).lint == ()
    assert _plan(kubernetes={"image": "reg.example/vllm-fleet@sha256:" + "a" * 64}).lint == ()


def test_cli_plan_shows_lint_and_json(tmp_path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text(_text(replicas=2))
    shown = CliRunner().invoke(app, ["plan", str(spec)])
    assert shown.exit_code == 0 and "warning:" in shown.output and "gpu_fit" in shown.output
    data = json.loads(CliRunner().invoke(app, ["plan", str(spec), "--json"]).output)
    assert data["lint"] and data["derived"]["startup_failure_threshold"]["why"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(_text(engine={"max_model_len": 65536, "max_num_seqs": 256}))
    failed = CliRunner().invoke(app, ["plan", str(bad)])
    assert failed.exit_code == 2 and "does not fit" in failed.output
