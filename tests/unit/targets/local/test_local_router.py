"""The local router in front of the replicas: started by ``up``, routable only after ``publish`` (which `up`
calls once verify passed), seen by ``status``, deregistered and stopped by ``down``.

The replicas are fake engines (tests/servers/fake_engine.py); the router is the real `vllm-fleet router`
process, reading the real SQLite registry under the spec's cache dir.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.unit.targets.local.test_local_target import Engines, alive, make_plan
from tests.unit.targets.local.test_local_target import engines as engines  # the fixture
from tests.waiting import wait_until
from vllm_fleet.errors import TargetError
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


def test_the_supervisor_restarts_a_killed_replica_and_the_router_routes_to_it_again(
    tmp_path: Path, engines: Engines
) -> None:
    plan = make_plan(tmp_path, replicas=1, router=True, supervise=True)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    try:
        asyncio.run(target.publish())
        [engine] = [r for r in read_state(plan.run_dir) if r.role == "engine"]
        os.kill(engine.pid, signal.SIGKILL)
        wait_until(
            lambda: any(r.restarts == 1 for r in read_state(plan.run_dir) if r.role == "engine"),
            timeout_s=30,
            what="the supervisor to restart the replica",
        )
        [again] = [r for r in read_state(plan.run_dir) if r.role == "engine"]
        assert (again.port, again.restarts) == (engine.port, 1) and again.pid != engine.pid
        wait_until(lambda: chat(plan.endpoints[0])[0] == 200, timeout_s=30, what="the router to route to it")
        [row] = [s for s in asyncio.run(target.status()) if s.replica.role == "engine"]
        assert row.healthy and row.restarts == 1 and "restarted 1x" in row.state
        assert "restarting it" in Path(plan.run_dir / "supervisor.log").read_text()
    finally:
        asyncio.run(target.down())
    pids = [r.pid for r in read_state(plan.run_dir)]
    assert pids == [] and not any(alive(pgid) for pgid in engines.pgids)


def test_a_rolling_restart_under_load_fails_no_request(tmp_path: Path, engines: Engines) -> None:
    """Requests through the router all the while: each replica is replaced (new port, verified, published),
    the old one drained then stopped; not one request fails."""
    engines.flags = ("--delay-ms", "30")
    plan = make_plan(tmp_path, replicas=2, router=True, supervise=True)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    outcomes: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            outcomes.append(chat(plan.endpoints[0])[0])

    try:
        asyncio.run(target.publish())
        before = {r.url for r in read_state(plan.run_dir) if r.role == "engine"}
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        replaced = asyncio.run(target.restart()).replicas
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        after = {r.url for r in read_state(plan.run_dir) if r.role == "engine"}
        assert {r.url for r in replaced} == after and not after & before and len(after) == 2
        assert len(outcomes) > 50 and set(outcomes) == {200}, f"{outcomes.count(200)} of {len(outcomes)} answered"
        assert all(r.supervised for r in read_state(plan.run_dir) if r.role == "engine")
        old_groups = [pgid for pgid in engines.pgids[:2]]  # the first two spawned: the replicas up started
        assert not any(alive(pgid) for pgid in old_groups)
    finally:
        stop.set()
        asyncio.run(target.down())
    assert not any(alive(pgid) for pgid in engines.pgids)


def test_restart_without_the_router_is_refused(tmp_path: Path, engines: Engines) -> None:
    plan = make_plan(tmp_path, router=False)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    try:
        with pytest.raises(TargetError, match="without the router") as info:
            asyncio.run(target.restart())
        assert info.value.fix and "router.enabled" in info.value.fix
    finally:
        asyncio.run(target.down())


def test_up_of_a_running_spec_with_other_engine_settings_replaces_the_replicas(
    tmp_path: Path, engines: Engines
) -> None:
    plan = make_plan(tmp_path, replicas=1, router=True)
    asyncio.run(LocalTarget(plan).up())
    try:
        asyncio.run(LocalTarget(plan).publish())
        with pytest.raises(TargetError, match="already running") as info:  # the same settings: nothing to do
            asyncio.run(LocalTarget(plan).preflight())
        assert info.value.fix and "vllm-fleet restart" in info.value.fix
        [old] = [r for r in read_state(plan.run_dir) if r.role == "engine"]

        engines.flags = ("--delay-ms", "1")  # the engine's command line changes, as a changed engine.* would
        target = LocalTarget(plan)
        [finding] = asyncio.run(target.preflight())
        assert (finding.check, finding.severity) == ("running", "pass") and "one at a time" in finding.detail
        result = asyncio.run(target.up())
        [new] = [r for r in read_state(plan.run_dir) if r.role == "engine"]
        assert [r.url for r in result.replicas] == [new.url] and new.url != old.url and "--delay-ms" in new.argv
        assert not alive(old.pid) and chat(plan.endpoints[0]) == (200, new.url)
    finally:
        asyncio.run(LocalTarget(plan).down())
