"""Changing a running local spec: a drain-first restart (local.surge 0), `up` rolling on an engine-environment
change, `up` scaling to the spec's replica count, and the engines' graceful shutdown (--shutdown-timeout).

Real processes over loopback: the fake engines (tests/servers/fake_engine.py) behind the real router, as in
test_local_router.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from tests.unit.targets.local.test_local_router import chat
from tests.unit.targets.local.test_local_target import Engines, alive, make_plan
from tests.unit.targets.local.test_local_target import engines as engines  # the fixture
from vllm_fleet import engine
from vllm_fleet.errors import EngineError, TargetError
from vllm_fleet.plan import Plan, resolve
from vllm_fleet.targets.base import Reporter
from vllm_fleet.targets.local import LocalTarget, replicas
from vllm_fleet.targets.local.state import ProcessRecord, read_state, state_path


class Lines(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def line(self, text: str) -> None:
        self.lines.append(text)


def changed(plan: Plan, replicas: int | None = None, env: dict[str, str] | None = None) -> Plan:
    """``plan``'s spec with another replica count or engine.env, resolved again (the same ports and cache)."""
    spec = plan.spec
    if env is not None:
        spec = spec.model_copy(update={"engine": spec.engine.model_copy(update={"env": env})})
    if replicas is not None:
        spec = spec.model_copy(update={"replicas": replicas})
    return resolve(spec, spec_dir=plan.spec_dir)


def engine_records(plan: Plan) -> list[ProcessRecord]:
    return sorted((r for r in read_state(plan.run_dir) if r.role == "engine"), key=lambda r: r.index)


def routed_to(plan: Plan) -> set[str]:
    """The backends the router holds now (its admin API)."""
    with urllib.request.urlopen(f"{plan.endpoints[0]}/admin/backends", timeout=5) as response:
        return {b["url"] for b in json.load(response)["backends"]}


def answered_by(plan: Plan, requests: int) -> set[str]:
    """The backends that answered ``requests`` chats of different prompts (the prefix policy spreads them)."""
    seen = set()
    for i in range(requests):
        body = json.dumps({"model": "fake-model", "messages": [{"role": "user", "content": f"q{i}"}], "max_tokens": 2})
        headers = {"content-type": "application/json"}
        request = urllib.request.Request(f"{plan.endpoints[0]}/v1/chat/completions", body.encode(), headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            seen.add(response.headers["x-vllm-fleet-backend"])
    return seen


def engines_alive(engines: Engines) -> int:
    """How many fake engine process groups we spawned are alive now (the router is not counted)."""
    count = 0
    for pgid in list(engines.pgids):
        try:
            cmdline = Path(f"/proc/{pgid}/cmdline").read_bytes()
        except OSError:
            continue
        count += b"fake_engine.py" in cmdline and alive(pgid)
    return count


def test_a_drain_first_restart_serves_throughout_and_never_runs_a_third_engine(
    tmp_path: Path, engines: Engines
) -> None:
    """local.surge 0, replicas 2, requests through the router all the while: each replica is drained and stopped
    before its replacement starts on its port; no request fails, at most 2 engines ever run, every one is new."""
    engines.flags = ("--delay-ms", "30")
    plan = make_plan(tmp_path, replicas=2, router=True, supervise=True, local="surge: 0")
    target = LocalTarget(plan)
    asyncio.run(target.up())
    outcomes: list[int] = []
    most: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            outcomes.append(chat(plan.endpoints[0])[0])

    def watch() -> None:
        while not stop.is_set():
            most.append(max(engines_alive(engines), len(engine_records(plan))))
            time.sleep(0.01)

    try:
        asyncio.run(target.publish())
        before = engine_records(plan)
        threads = [threading.Thread(target=load) for _ in range(3)] + [threading.Thread(target=watch)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        report = Lines()
        replaced = asyncio.run(target.restart(report)).replicas
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        after = engine_records(plan)
        assert "restart: surge 0 (local.surge: 0)" in report.lines
        assert max(most) == 2, f"up to {max(most)} engines at once"
        assert [r.url for r in replaced] == [r.url for r in before] == [r.url for r in after]  # the same ports
        assert not {r.pid for r in after} & {r.pid for r in before}
        assert not any(alive(r.pid) for r in before) and all(r.supervised for r in after)
        assert len(outcomes) > 50 and set(outcomes) == {200}, f"{outcomes.count(200)} of {len(outcomes)} answered"
        assert routed_to(plan) == {r.url for r in after}
    finally:
        stop.set()
        asyncio.run(target.down())
    assert not any(alive(pgid) for pgid in engines.pgids)


def test_a_drain_first_restart_of_a_single_replica_is_refused_with_the_fix(tmp_path: Path, engines: Engines) -> None:
    plan = make_plan(tmp_path, replicas=1, router=True, local="surge: 0")
    target = LocalTarget(plan)
    asyncio.run(target.up())
    try:
        asyncio.run(target.publish())
        [before] = engine_records(plan)
        with pytest.raises(TargetError, match="one replica") as info:
            asyncio.run(target.restart())
        fix = info.value.fix or ""
        assert "free memory" in fix and "local.surge: 1" in fix and "replicas: 2" in fix
        assert engine_records(plan) == [before] and chat(plan.endpoints[0]) == (200, before.url)  # untouched
        # up with changed settings is refused in preflight, before it stages or touches anything
        with pytest.raises(TargetError, match="one replica"):
            asyncio.run(LocalTarget(changed(plan, env={"FLEET_TEST_MARK": "x"})).preflight())
    finally:
        asyncio.run(target.down())


def test_up_of_a_running_spec_whose_engine_env_changed_replaces_the_replica(tmp_path: Path, engines: Engines) -> None:
    plan = make_plan(tmp_path, replicas=1, router=True, local="surge: 1")
    asyncio.run(LocalTarget(plan).up())
    try:
        asyncio.run(LocalTarget(plan).publish())
        [old] = engine_records(plan)
        assert old.env is not None and old.env["VLLM_CPU_KVCACHE_SPACE"] == "1"
        with pytest.raises(TargetError, match="already running"):  # the same env: nothing to change
            asyncio.run(LocalTarget(plan).preflight())

        new_plan = changed(plan, env={"FLEET_TEST_MARK": "rolled"})
        target = LocalTarget(new_plan)
        [finding] = asyncio.run(target.preflight())
        assert "other engine settings" in finding.detail
        asyncio.run(target.up())
        [new] = engine_records(plan)
        assert new.pid != old.pid and not alive(old.pid) and new.argv[1:] != []
        assert new.env is not None and new.env["FLEET_TEST_MARK"] == "rolled"
        assert b"FLEET_TEST_MARK=rolled" in Path(f"/proc/{new.pid}/environ").read_bytes().split(b"\0")
        assert chat(plan.endpoints[0]) == (200, new.url)
    finally:
        asyncio.run(LocalTarget(plan).down())


def test_up_scales_a_running_spec_up_and_down_and_the_router_routes_to_exactly_that_set(
    tmp_path: Path, engines: Engines
) -> None:
    """1 -> 2 (with changed engine flags: the kept replica is rolled too) -> 1 through `up`, with the supervisor:
    the router routes to exactly the spec's replicas each time, the removed one is stopped and stays stopped."""
    one = make_plan(tmp_path, replicas=1, router=True, supervise=True)
    two = changed(one, replicas=2)
    asyncio.run(LocalTarget(one).up())
    try:
        asyncio.run(LocalTarget(one).publish())
        [first] = engine_records(one)

        engines.flags = ("--delay-ms", "1")  # the engine's command line changes too
        target = LocalTarget(two)
        [finding] = asyncio.run(target.preflight())
        assert "1 replica(s) running, the spec wants 2: up scales" in finding.detail
        assert "other engine settings" in finding.detail
        result = asyncio.run(target.up())
        asyncio.run(target.publish())  # what core `up` does after verify
        grown = engine_records(two)
        assert [r.index for r in grown] == [0, 1] and all(r.supervised for r in grown)
        assert all("--delay-ms" in r.argv for r in grown) and not alive(first.pid)  # replica 0 rolled
        assert [r.url for r in result.replicas] == [r.url for r in grown]
        assert "scaled from 1 to 2 replicas" in result.notes
        assert routed_to(two) == {r.url for r in grown}
        assert answered_by(two, 20) == {r.url for r in grown}

        target = LocalTarget(one)  # back to 1: the highest index goes
        [finding] = asyncio.run(target.preflight())
        assert finding.detail == "2 replica(s) running, the spec wants 1: up scales"  # replica 0 runs one's settings
        result = asyncio.run(target.up())
        asyncio.run(target.publish())
        [kept] = engine_records(one)
        assert kept == grown[0] and not alive(grown[1].pid)
        assert "scaled from 2 to 1 replicas" in result.notes
        assert routed_to(one) == {kept.url}
        assert answered_by(one, 10) == {kept.url}
        time.sleep(2.5)  # two supervisor ticks: it must not bring replica 1 back
        assert engine_records(one) == [kept] and not alive(grown[1].pid)
    finally:
        asyncio.run(LocalTarget(one).down())
    assert not any(alive(pgid) for pgid in engines.pgids)


def test_engines_get_the_shutdown_timeout_and_down_lets_a_request_in_flight_finish(
    tmp_path: Path, engines: Engines
) -> None:
    """Every engine's argv carries --shutdown-timeout availability.shutdown_timeout_s; down (SIGTERM) lets a
    request the engine holds finish instead of cutting it, and is quick when nothing is in flight."""
    engines.flags = ("--delay-ms", "1500")
    plan = make_plan(tmp_path, replicas=2, router=True)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    held: list[tuple[int, str]] = []
    try:
        records = engine_records(plan)
        timeout = str(plan.spec.availability.shutdown_timeout_s)
        assert all(r.argv[r.argv.index("--shutdown-timeout") + 1] == timeout for r in records)
        assert plan.stop_grace_s == plan.spec.availability.shutdown_timeout_s + 15
        request = threading.Thread(target=lambda: held.append(chat(records[0].url)))  # straight to the engine
        request.start()
        time.sleep(0.5)  # it is in flight: the engine answers after 1.5 s
    finally:
        asyncio.run(target.down())
    request.join()
    assert held == [(200, "")]
    assert not any(alive(pgid) for pgid in engines.pgids)

    engines.flags = ()
    asyncio.run(target.up())
    started = time.monotonic()
    asyncio.run(target.down())
    assert time.monotonic() - started < 3, "an idle down waits for nothing"


def test_a_state_file_without_the_engine_env_is_read_and_compared_by_argv_only(tmp_path: Path) -> None:
    """State written before the env was recorded: its records read (env None), and `up` of the same spec sees no
    change (the env unknown is not a change); another env on a recorded one is."""
    plan = make_plan(tmp_path, replicas=1, router=True)
    argv = replicas.command(plan, plan.ports[0])
    old = {"role": "engine", "index": 0, "pid": 1, "start_ticks": 1, "port": plan.ports[0], "url": "u", "log": "l",
           "argv": argv, "restarts": 0, "supervised": True}  # fmt: skip
    state_path(plan.run_dir).parent.mkdir(parents=True)
    state_path(plan.run_dir).write_text(json.dumps({"processes": [old]}))
    [record] = read_state(plan.run_dir)
    assert record.env is None and not replicas.differs(plan, record)
    assert replicas.differs(plan, replace(record, env={"VLLM_CPU_KVCACHE_SPACE": "2"}))
    assert not replicas.differs(plan, replace(record, env=engine.vllm_env(plan.spec)))


def test_a_failed_drain_first_replacement_gives_way_to_the_old_command_line(tmp_path: Path, engines: Engines) -> None:
    """surge 0: replica 0 is drained and stopped, its replacement dies while starting; the old command line runs
    again on its port, routed beside replica 1, and the error says both."""
    plan = make_plan(tmp_path, replicas=2, router=True, local="surge: 0", start_timeout_s=10)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    try:
        asyncio.run(target.publish())
        before = engine_records(plan)
        engines.flags = ("--exit-after", "0")  # the new command line: an engine that dies while starting
        with pytest.raises(EngineError) as info:
            asyncio.run(target.restart())
        assert "replica 0 runs again with its previous settings" in info.value.message
        after = engine_records(plan)
        assert [(r.index, r.port, r.argv) for r in after] == [(r.index, r.port, r.argv) for r in before]
        assert after[0].pid != before[0].pid and after[1] == before[1]  # replica 1 untouched
        assert routed_to(plan) == {r.url for r in after}
        assert answered_by(plan, 10) == {r.url for r in after}
    finally:
        asyncio.run(target.down())
    assert not any(alive(pgid) for pgid in engines.pgids)


def test_a_new_replica_failing_while_scaling_up_leaves_the_running_one_serving(
    tmp_path: Path, engines: Engines
) -> None:
    one = make_plan(tmp_path, replicas=1, router=True, start_timeout_s=10)
    asyncio.run(LocalTarget(one).up())
    try:
        asyncio.run(LocalTarget(one).publish())
        [first] = engine_records(one)
        engines.flags = ("--exit-after", "0")
        two = changed(one, replicas=2)
        target = LocalTarget(two)
        asyncio.run(target.preflight())
        with pytest.raises(EngineError):
            asyncio.run(target.up())
        assert engine_records(one) == [first] and alive(first.pid)  # the new one's record and process are gone
        assert routed_to(one) == {first.url} and answered_by(one, 5) == {first.url}
    finally:
        asyncio.run(LocalTarget(one).down())
    assert not any(alive(pgid) for pgid in engines.pgids)
