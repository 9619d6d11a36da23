"""The main path with the real engine: up -> verify -> answer -> down, and the ways it can go wrong."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CLI, Served, fleet, group_members, state_pids, write_spec

pytestmark = pytest.mark.e2e


def test_up_verified_and_answers_paris(served: Served) -> None:
    assert "verified" in served.up_output
    question = [{"role": "user", "content": "What is the capital of France?"}]
    resp = httpx.post(
        f"{served.url}/v1/chat/completions",
        json={"model": served.model, "messages": question, "max_tokens": 20, "temperature": 0},
        timeout=60,
    )
    assert "Paris" in resp.json()["choices"][0]["message"]["content"]


def test_verify_spec_passes_with_json(served: Served) -> None:
    result = fleet("verify", str(served.spec), "--json", "--requests", "3")
    assert result.returncode == 0, result.stderr
    [report] = json.loads(result.stdout)
    assert report["passed"] and [c["name"] for c in report["checks"]] == ["health", "models", "chat", "stream", "slo"]


def test_verify_names_the_failing_check(served: Served) -> None:
    wrong_model = fleet("verify", served.url, "--model", "not-served")
    assert wrong_model.returncode == 1
    assert "failed check: models" in wrong_model.stdout
    tight_slo = fleet("verify", served.url, "--slo", "0.001", "--requests", "2")
    assert tight_slo.returncode == 1
    assert "failed check: slo" in tight_slo.stdout


def test_second_up_says_already_running(served: Served) -> None:
    result = fleet("up", str(served.spec))
    assert result.returncode == 1
    assert "already running" in result.stderr
    assert fleet("status", str(served.spec)).returncode == 0


def test_failed_start_shows_the_log_and_leaves_no_process(tmp_path: Path, demo_model: Path) -> None:
    spec = write_spec(tmp_path, demo_model, name="broken", engine="extra_args: [--no-such-flag]")
    result = fleet("up", str(spec))
    assert result.returncode == 1
    assert "exited with code" in result.stderr
    assert "no-such-flag" in result.stderr  # the engine's own complaint, from the log tail
    assert not (tmp_path / "cache" / "run" / "broken" / "state.json").exists()


def test_ctrl_c_during_start_leaves_no_process(tmp_path: Path, demo_model: Path) -> None:
    spec = write_spec(tmp_path, demo_model, name="interrupted")
    proc = subprocess.Popen([CLI, "up", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "cache" / "run" / "interrupted" / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    [pgid] = state_pids(spec, "interrupted")
    time.sleep(3)  # let vLLM get going (and fork its engine) before the interrupt
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert group_members(pgid) == []


def _wait_for_state(spec: Path, name: str, proc: subprocess.Popen) -> int:
    state = spec.parent / "cache" / "run" / name / "state.json"
    deadline = time.monotonic() + 120
    while not state.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    [pgid] = state_pids(spec, name)
    return pgid


def test_second_ctrl_c_kills_at_once_and_leaves_no_process(tmp_path: Path, demo_model: Path) -> None:
    spec = write_spec(tmp_path, demo_model, name="twice")
    proc = subprocess.Popen([CLI, "up", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pgid = _wait_for_state(spec, "twice", proc)
    time.sleep(3)  # vLLM has forked its engine by now
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "stopping replica 0" in out
    assert group_members(pgid) == []


def test_down_after_the_api_server_was_killed_stops_what_it_left(tmp_path: Path, demo_model: Path) -> None:
    spec = write_spec(tmp_path, demo_model, name="killed")
    assert fleet("up", str(spec), "--no-verify").returncode == 0
    [pgid] = state_pids(spec, "killed")
    members = group_members(pgid)
    assert len(members) > 1, "vLLM's EngineCore should run beside its API server"
    os.kill(pgid, signal.SIGKILL)  # the API server only: its EngineCore and workers stay
    deadline = time.monotonic() + 10
    while pgid in group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_members(pgid)
    assert left, "the engine's children outlive its API server"
    status = fleet("status", str(spec))
    assert status.returncode == 1 and "still running" in status.stdout, status.stdout
    down = fleet("down", str(spec))
    assert down.returncode == 0 and "stopped 1 replica" in down.stdout, down.stdout + down.stderr
    assert group_members(pgid) == []
