"""The CLI starts fast (nothing heavy imported) and maps errors to exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import ROOT

HEAVY = (
    "torch",
    "vllm",
    "transformers",
    "boto3",
    "botocore",
    "google.cloud",
    "huggingface_hub",
    "kubernetes",
    "obstore",
)


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vllm_fleet.cli", *args], capture_output=True, text=True, timeout=60)


def test_help_imports_nothing_heavy() -> None:
    code = "import sys; from vllm_fleet.cli import app; print(sorted(sys.modules))"
    modules = json.loads(subprocess.check_output([sys.executable, "-c", code], text=True).replace("'", '"'))
    assert not [m for m in modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY} or m in HEAVY]


def test_plan_json_of_the_quickstart() -> None:
    result = run("plan", str(ROOT / "examples" / "quickstart.yaml"), "--json", "--env", "production")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["replicas"] == 2 and plan["env"] == "production"
    assert plan["engine_argv"][:2] == ["--model", plan["model_dir"]]


def test_bad_spec_exits_2_with_one_message(tmp_path: Path) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel: {source: /m}\nreplicas: 0\n")
    result = run("plan", str(spec))
    assert result.returncode == 2
    assert "replicas: Input should be greater than 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_of_a_dead_endpoint_fails_the_health_check() -> None:
    result = run("verify", "http://127.0.0.1:9", "--json")
    assert result.returncode == 1
    [report] = json.loads(result.stdout)
    assert report["failed_check"] == "health"
