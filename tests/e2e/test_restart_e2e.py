"""A rolling restart of two real vLLM replicas under load through the router: not one request fails.

`vllm-fleet bench` sends to the spec's one endpoint (the router) at a steady rate while `vllm-fleet restart`
replaces each replica (a new one started, verified and published, the old one drained, then stopped). The
test prints completed, failed and the latency before and during the restart.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import CLI, fleet, free_port, group_members, state_pids

pytestmark = pytest.mark.e2e

BENCH = ("--request-rate", "1", "--random-input-len", "16", "--random-output-len", "8", "--ignore-eos", "--json")


def test_restart_under_load_fails_no_request(demo_model: Path, tmp_path: Path) -> None:
    spec = tmp_path / "rolling.yaml"
    spec.write_text(
        "name: rolling\n"
        f"model: {{source: {demo_model.as_uri()}, served_name: smollm2}}\n"
        "replicas: 2\n"
        "engine: {dtype: float32, max_model_len: 512, max_num_seqs: 4}\n"
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
        f"local: {{base_port: {free_port()}, start_timeout_s: 600}}\n"
        "slo: {requests: 3, p95_latency_s: 30}\n"
        "availability: {drain_timeout_s: 60}\n"
    )
    up = fleet("up", str(spec))
    assert up.returncode == 0, up.stdout + up.stderr
    old = state_pids(spec, "rolling")
    try:
        before = fleet("bench", str(spec), *BENCH, "--num-prompts", "10", timeout=300)
        assert before.returncode == 0, before.stdout + before.stderr
        # Back-to-back bench runs for as long as the restart takes (a CLI start between runs is the only gap).
        restart = subprocess.Popen(
            [CLI, "restart", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started, runs = time.monotonic(), []
        while restart.poll() is None:
            run = fleet("bench", str(spec), *BENCH, "--duration", "20", timeout=300)
            assert run.returncode in (0, 1), run.stdout + run.stderr  # 1: a failed request, counted below
            runs.append(json.loads(run.stdout))
        took = time.monotonic() - started
        out, err = restart.communicate(timeout=60)
        assert restart.returncode == 0, out + err
        completed, failed = sum(r["completed"] for r in runs), sum(r["failed"] for r in runs)
        calm = json.loads(before.stdout)
        worst = max(r["p99_e2el_ms"] for r in runs if r["completed"])
        print(
            f"restart took {took:.0f} s; during it, {len(runs)} bench runs: {completed} completed, {failed} failed, "
            f"p50 e2e {sorted(r['p50_e2el_ms'] for r in runs)[len(runs) // 2]:.0f} ms, worst p99 {worst:.0f} ms; "
            f"before: p50 {calm['p50_e2el_ms']:.0f} ms, p99 {calm['p99_e2el_ms']:.0f} ms"
        )
        assert failed == 0 and completed >= 20
        assert not any(group_members(g) for g in old), "the replaced replicas must be stopped"
        new = state_pids(spec, "rolling")
        assert len(new) == 2 and not set(new) & set(old)
    finally:
        down = fleet("down", str(spec))
    assert down.returncode == 0 and "stopped 2 replica" in down.stdout, down.stdout + down.stderr
