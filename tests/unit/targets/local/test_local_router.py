"""The local router in front of the replicas: started by ``up``, routable only after ``publish`` (which `up`
calls once verify passed), seen by ``status``, deregistered and stopped by ``down``.

The replicas are fake engines (tests/servers/fake_engine.py); the router is the real `vllm-fleet router`
process, reading the real SQLite registry under the spec's cache dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.unit.targets.local.test_local_target import Engines, alive, make_plan
from tests.unit.targets.local.test_local_target import engines as engines  # the fixture
from vllm_fleet.registry import open_registry
from vllm_fleet.targets.local import LocalTarget
from vllm_fleet.targets.local.state import read_state


def chat(url: str) -> tuple[int, str]:
    body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    request = urllib.request.Request(f"{url}/v1/chat/completions", body.encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("x-vllm-fleet-backend", "")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


async def deployments(plan) -> list[str]:
    async with await open_registry(plan.registry_url) as registry:
        return [d.name for d in await registry.deployments()]


def test_up_serves_one_endpoint_that_routes_only_after_publish(tmp_path: Path, engines: Engines) -> None:
    plan = make_plan(tmp_path, replicas=2, router=True)
    target = LocalTarget(plan)
    result = asyncio.run(target.up())
    try:
        assert [(r.role, r.url) for r in result.replicas] == [
            *(("engine", url) for url in plan.replica_urls),
            ("router", plan.endpoints[0]),
        ]
        [router] = [r for r in read_state(plan.run_dir) if r.role == "router"]
        assert router.url == plan.endpoints[0] and router.port == plan.spec.local.base_port

        # Started, not yet verified: the router knows no replica, so it routes nothing.
        assert chat(router.url)[0] == 404
        asyncio.run(target.publish())
        assert asyncio.run(deployments(plan)) == ["fake"]
        backends = {chat(router.url)[1] for _ in range(8)}
        assert backends <= set(plan.replica_urls) and backends  # answered through the router, by a replica

        rows = asyncio.run(target.status())
        assert [(s.replica.role, s.routed) for s in rows] == [
            ("engine", "healthy"),
            ("engine", "healthy"),
            ("router", None),
        ]

        async def urls(direct: bool) -> list[str]:
            async with target.endpoints(direct=direct) as found:
                return found

        assert asyncio.run(urls(False)) == [router.url]
        assert asyncio.run(urls(True)) == plan.replica_urls
    finally:
        stopped = asyncio.run(target.down())
    assert [r.url for r in stopped] == plan.replica_urls
    assert asyncio.run(deployments(plan)) == []
    assert not any(alive(pgid) for pgid in engines.pgids)  # engines and the router: nothing outlives down


def test_a_router_that_cannot_start_fails_up_and_leaves_nothing(tmp_path: Path, engines: Engines) -> None:
    plan = make_plan(tmp_path, router=True)
    (plan.cache_root / "registry.sqlite").mkdir(parents=True)  # a directory where the SQLite file must be
    with pytest.raises(Exception, match="router exited"):
        asyncio.run(LocalTarget(plan).up())
    assert not any(alive(pgid) for pgid in engines.pgids)
    assert read_state(plan.run_dir) == []
    assert os.path.isdir(plan.cache_root / "registry.sqlite")
