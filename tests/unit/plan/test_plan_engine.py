"""Plan resolution and the vLLM command line built from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vllm_fleet import engine
from vllm_fleet.errors import SpecError
from vllm_fleet.plan import model_key, resolve
from vllm_fleet.spec import parse_spec

SPEC = """\
name: demo
model: {source: models/tiny, served_name: tiny}
replicas: 3
local: {base_port: 9100}
cache: {dir: cache}
availability: {drain_timeout_s: 60}
"""


def test_relative_paths_resolve_against_the_spec_directory(tmp_path: Path) -> None:
    plan = resolve(parse_spec(SPEC), spec_dir=tmp_path)
    assert plan.source == (tmp_path / "models" / "tiny").as_uri()
    assert plan.cache_root == tmp_path / "cache"
    assert plan.model_dir.parent == tmp_path / "cache" / "models"
    # The router serves base_port, the replicas the ports above it; clients get the router's URL.
    assert (plan.router_port, plan.ports) == (9100, (9101, 9102, 9103))
    assert plan.endpoints == ["http://127.0.0.1:9100"]
    assert plan.replica_urls[2] == "http://127.0.0.1:9103"


def test_without_the_router_each_replica_is_an_endpoint(tmp_path: Path) -> None:
    plan = resolve(parse_spec(SPEC + "router: {enabled: false}\n"), spec_dir=tmp_path)
    assert (plan.router_port, plan.ports) == (None, (9100, 9101, 9102))
    assert plan.endpoints == plan.replica_urls == [f"http://127.0.0.1:{p}" for p in (9100, 9101, 9102)]


def test_model_key_is_stable_and_distinct() -> None:
    assert model_key("s3://b/m") == model_key("s3://b/m")
    assert model_key("s3://b/m") != model_key("s3://b/m", "v2")
    assert model_key("hf://org/My Model").startswith("My-Model-")


def test_derived_numbers_say_why(tmp_path: Path) -> None:
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "w.bin").write_bytes(b"x" * 1000)
    plan = resolve(parse_spec(SPEC), spec_dir=tmp_path)
    assert plan.model_bytes == 1000
    assert plan.termination_grace_s == 60 + 30 + 15
    assert "drain_timeout_s 60" in plan.derived["termination_grace_s"].why
    assert "shutdown_timeout_s 30" in plan.derived["termination_grace_s"].why
    assert plan.startup_budget_s >= 90
    assert "assumed read bandwidth" in plan.derived["startup_budget_s"].why


def test_vllm_args_follow_the_spec(tmp_path: Path) -> None:
    text = SPEC + "engine: {max_model_len: 4096, tensor_parallel_size: 2, extra_args: [--seed, '7']}\n"
    text += "resources: {gpus: 2}\n"
    plan = resolve(parse_spec(text), spec_dir=tmp_path)
    args = engine.vllm_args(plan.spec, model_dir="/models/tiny", port=8000)
    pairs = dict(zip(args[::2], args[1::2], strict=False))
    assert args[:2] == ["--model", "/models/tiny"]
    assert pairs["--served-model-name"] == "tiny"
    assert "--tensor-parallel-size" in args and args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--max-model-len") + 1] == "4096"
    assert "--gpu-memory-utilization" in args
    assert args[-2:] == ["--seed", "7"]
    assert "VLLM_CPU_KVCACHE_SPACE" not in engine.vllm_env(plan.spec)  # a GPU replica


def test_cpu_replica_gets_kv_cache_space_and_local_command(tmp_path: Path) -> None:
    plan = resolve(parse_spec(SPEC), spec_dir=tmp_path)
    assert engine.vllm_env(plan.spec)["VLLM_CPU_KVCACHE_SPACE"] == "1"
    argv = engine.local_command(plan.spec, model_dir="/m", port=9100)
    assert argv[1:3] == ["-m", engine.API_SERVER_MODULE]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert "--enforce-eager" in argv


def test_model_size_of_a_path_with_spaces(tmp_path: Path) -> None:
    model = tmp_path / "my models" / "tiny"
    model.mkdir(parents=True)
    (model / "w.bin").write_bytes(b"x" * 10)
    plan = resolve(parse_spec("name: demo\nmodel: {source: 'my models/tiny'}\n"), spec_dir=tmp_path)
    assert "%20" in plan.source and plan.model_bytes == 10


def _model_with_config(tmp_path: Path, **config: object) -> None:
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"num_attention_heads": 9, **config}))


def test_max_model_len_beyond_the_models_config_is_a_spec_error(tmp_path: Path) -> None:
    _model_with_config(tmp_path, max_position_embeddings=8192)
    too_long = SPEC + "engine: {max_model_len: 100000}\n"
    with pytest.raises(SpecError, match=r"engine.max_model_len: 100000 is more than the model allows \(8192") as err:
        resolve(parse_spec(too_long), spec_dir=tmp_path)
    assert err.value.fix == "set engine.max_model_len to at most 8192"
    assert resolve(parse_spec(SPEC + "engine: {max_model_len: 8192}\n"), spec_dir=tmp_path)


def test_rope_scaling_stretches_the_limit_and_tp_must_divide_the_heads(tmp_path: Path) -> None:
    _model_with_config(tmp_path, max_position_embeddings=4096, rope_scaling={"rope_type": "linear", "factor": 4.0})
    assert resolve(parse_spec(SPEC + "engine: {max_model_len: 16384}\n"), spec_dir=tmp_path)
    tp2 = SPEC + "engine: {tensor_parallel_size: 2}\nresources: {gpus: 2, gpu_type: nvidia-l4}\n"
    with pytest.raises(
        SpecError, match=r"engine\.tensor_parallel_size: 2 does not divide the model's 9 attention heads"
    ):
        resolve(parse_spec(tp2), spec_dir=tmp_path)


def test_plan_shows_the_argv_its_target_runs(tmp_path: Path) -> None:
    local = resolve(parse_spec(SPEC), spec_dir=tmp_path)
    assert local.engine_args[:2] == ["--model", str(local.model_dir)]
    assert local.engine_args[local.engine_args.index("--host") + 1] == "127.0.0.1"
    pod = resolve(parse_spec(SPEC + "target: kubernetes\n"), spec_dir=tmp_path)
    assert pod.engine_args == pod.pod_engine_args
    assert pod.engine_args[1] == pod.derived["pod_model_dir"].value
    assert pod.engine_args[pod.engine_args.index("--host") + 1] == "0.0.0.0"
    assert pod.engine_args[pod.engine_args.index("--port") + 1] == str(pod.spec.kubernetes.port)
