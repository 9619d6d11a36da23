"""FleetSpec loading: good specs resolve, bad specs give one clear message naming the path and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import ROOT
from vllm_fleet.errors import SpecError
from vllm_fleet.spec import load_spec, parse_spec

GOOD = """\
name: demo
model:
  source: s3://bucket/models/smollm2
replicas: 2
environments:
  production:
    replicas: 4
    engine: {max_num_seqs: 64}
  development:
    replicas: 1
"""


def test_quickstart_example_is_valid() -> None:
    spec = load_spec(ROOT / "examples" / "quickstart.yaml")
    assert spec.name == "quickstart"
    assert spec.target == "local"


def test_overlay_deep_merges_over_the_base() -> None:
    base = parse_spec(GOOD)
    prod = parse_spec(GOOD, env="production")
    assert (base.replicas, prod.replicas) == (2, 4)
    assert prod.engine.max_num_seqs == 64
    assert prod.engine.max_model_len == base.engine.max_model_len  # untouched keys survive the merge
    assert prod.model.source == "s3://bucket/models/smollm2"


def test_unknown_environment_lists_the_known_ones() -> None:
    with pytest.raises(SpecError, match=r"no environment 'prodution' \(did you mean 'production'\?\)"):
        parse_spec(GOOD, env="prodution")


BAD_SPECS = [
    # (yaml, expected fragment of the message)
    ("- name: x\n", "the spec must be a mapping"),
    ("just a string\n", "the spec must be a mapping"),
    ("", "the spec must be a mapping"),
    ("name: x\nmodel: {source: /m}\nreplica: 2\n", "replica: unknown key (did you mean 'replicas'?)"),
    ("name: x\nmodel: {source: /m, sorce: /n}\n", "model.sorce: unknown key (did you mean 'source'?)"),
    (
        "name: x\nmodel: {source: /m}\nengine: {max_model_length: 10}\n",
        "engine.max_model_length: unknown key (did you mean 'max_model_len'?)",
    ),
    (
        "name: x\nmodel: {source: /m}\nslo: {p95_latency: 1}\n",
        "slo.p95_latency: unknown key (did you mean 'p95_latency_s'?)",
    ),
    ("name: x\nmodel: {source: /m}\nresources: {gpu: 1}\n", "resources.gpu: unknown key (did you mean 'gpus'?)"),
    ("name: x\nmodel: {source: /m}\nlocal: {port: 9000}\n", "local.port: unknown key"),
    (
        "name: x\nmodel: {source: /m}\nenvironments: {production: {replicaz: 3}}\n",
        "environments.production.replicaz: unknown key (did you mean 'replicas'?)",
    ),
    (
        "name: x\nmodel: {source: /m}\nenvironments: {staging: {engine: {max_num_seq: 3}}}\n",
        "environments.staging.engine.max_num_seq: unknown key (did you mean 'max_num_seqs'?)",
    ),
    (
        "name: x\nmodel: {source: /m}\nenvironments: {production: {replicas: 0}}\n",
        "environments.production.replicas: Input should be greater than 0",
    ),
    (
        "name: x\nmodel: {source: /m}\nenvironments: {production: {name: y}}\n",
        "environments.production.name: cannot be overridden",
    ),
    (
        "name: x\nmodel: {source: /m}\nenvironments: {production: 3}\n",
        "environments.production: Input should be a valid dictionary",
    ),
    ("name: x\nmodel: {source: /m}\nreplicas: many\n", "replicas: Input should be a valid integer"),
    ("name: x\nmodel: {source: /m}\nreplicas: 0\n", "replicas: Input should be greater than 0"),
    ("name: x\nmodel: {source: /m}\nreplicas: -2\n", "replicas: Input should be greater than 0"),
    (
        "name: x\nmodel: {source: /m}\nengine: {max_model_len: 0}\n",
        "engine.max_model_len: Input should be greater than 0",
    ),
    (
        "name: x\nmodel: {source: /m}\nengine: {max_num_seqs: -1}\n",
        "engine.max_num_seqs: Input should be greater than 0",
    ),
    (
        "name: x\nmodel: {source: /m}\nengine: {gpu_memory_utilization: 1.5}\n",
        "engine.gpu_memory_utilization: Input should be less than or equal to 1",
    ),
    (
        "name: x\nmodel: {source: /m}\nengine: {dtype: fp8}\n",
        "engine.dtype: Input should be 'auto', 'bfloat16', 'float16' or 'float32'",
    ),
    ("name: x\nmodel: {source: /m}\nslo: {p95_latency_s: 0}\n", "slo.p95_latency_s: Input should be greater than 0"),
    ("name: x\nmodel: {source: /m}\nlocal: {base_port: 70000}\n", "local.base_port: Input should be less than 65536"),
    ("name: x\nmodel: {source: /m}\nlocal: {surge: 2}\n", "local.surge: Input should be 'auto', 0 or 1 (got 2)"),
    ("name: x\nmodel: {source: ftp://host/m}\n", "model.source: unknown source scheme 'ftp'"),
    ("name: x\nmodel: {source: 's3://'}\n", "model.source: source has a scheme but no location"),
    (
        "name: x\nmodel: {source: /m}\nengine: {tensor_parallel_size: 4}\nresources: {gpus: 2}\n",
        "engine.tensor_parallel_size=4 needs 4 GPUs but resources.gpus=2",
    ),
    ("name: My_Model\nmodel: {source: /m}\n", "name: 'My_Model' is not a valid Kubernetes name"),
    ("name: " + "a" * 64 + "\nmodel: {source: /m}\n", "is not a valid Kubernetes name"),
    ("name: x\n", "model: required key is missing"),
    ("model: {source: /m}\n", "name: required key is missing"),
    ("name: x\nmodel: /m\n", "model: Input should be a valid dictionary"),
    ("name: x\nmodel: {source: /m}\ntarget: cloud\n", "target: Input should be 'local' or 'kubernetes'"),
    ("name: x\nmodel: {source: /m}\nengine: {extra_args: --foo}\n", "engine.extra_args: Input should be a valid list"),
    (
        "name: x\nmodel: {source: /m}\nresources: {gpus: -1}\n",
        "resources.gpus: Input should be greater than or equal to 0",
    ),
    (
        "name: x\nmodel: {source: /m}\navailability: {drain_timeout_s: 0}\n",
        "availability.drain_timeout_s: Input should be greater than 0",
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_SPECS, ids=[f"bad{i:02d}" for i in range(len(BAD_SPECS))])
def test_bad_spec_names_path_and_problem(text: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec(text, origin="spec.yaml")
    message = str(info.value)
    assert expected in message
    assert message.startswith("spec.yaml: ")
    assert len(message.splitlines()) <= 4
    assert info.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "line"),
    [("name: x\nmodel: {source: /m\n", 3), ("name: x\nmodel:\n  source: /m\n bad: 1\n", 4), ("name: [x\n", 2)],
)
def test_yaml_syntax_error_gives_the_line(text: str, line: int) -> None:
    with pytest.raises(SpecError, match=rf"spec.yaml:{line}:\d+: invalid YAML"):
        parse_spec(text, origin="spec.yaml")


def test_many_errors_are_capped_to_a_few_lines() -> None:
    text = "name: X_\nmodel: {source: ftp://a}\nreplicas: 0\nengine: {max_model_len: 0, max_num_seqs: 0}\n"
    with pytest.raises(SpecError) as info:
        parse_spec(text, origin="spec.yaml")
    assert len(str(info.value).splitlines()) == 4
    assert "... and 2 more" in str(info.value)


def test_missing_spec_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read spec"):
        load_spec(tmp_path / "nope.yaml")
