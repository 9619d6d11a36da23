"""LocalTarget end to end, with the fake engine (tests/servers/fake_engine.py) standing in for vLLM.

``engine.local_command`` is replaced by the fake engine's command line on the replica's port, so ``up`` really
stages a (tiny) model into the cache, spawns a process group, waits for /health, records it in state.json, and
``down`` really stops the group. Every check of what runs walks /proc. Everything is on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import fake_engine
from tests.waiting import wait_until
from vllm_fleet import engine
from vllm_fleet.errors import EngineError, TargetError
from vllm_fleet.plan import Plan, resolve
from vllm_fleet.spec import parse_spec
from vllm_fleet.targets.local import LocalTarget, process
from vllm_fleet.targets.local.state import state_path

SERVED = "fake-model"


def alive(pid: int) -> bool:
    """``pid`` exists in /proc and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def core_pid(log: Path) -> int:
    """The fake EngineCore's pid, from the line the fake engine logs as it starts it."""
    [pid] = re.findall(r"^\(EngineCore_DP0 pid=(\d+)\)", log.read_text(), re.MULTILINE)
    return int(pid)


class Engines:
    """What stands in for vLLM: the fake engine's flags, and every group LocalTarget spawned."""

    def __init__(self) -> None:
        self.flags: tuple[str, ...] = ()
        self.pgids: list[int] = []

    def command(self, spec: object, *, model_dir: str, port: int, shutdown_timeout_s: int | None = None) -> list[str]:
        assert Path(model_dir).is_dir()  # up stages before it starts an engine
        graceful = () if shutdown_timeout_s is None else ("--shutdown-timeout", str(shutdown_timeout_s))
        return fake_engine.argv(port, "--models", SERVED, *self.flags, *graceful)


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> Iterator[Engines]:
    """The fake engine instead of vLLM; any group left at the end is SIGKILLed (a failing test leaves nothing)."""
    engines = Engines()
    spawn = process.spawn

    def recording_spawn(argv: list[str], env: dict[str, str], log: Path, append: bool = False) -> subprocess.Popen:
        proc = spawn(argv, env, log, append)
        engines.pgids.append(proc.pid)
        return proc

    monkeypatch.setattr(engine, "local_command", engines.command)
    monkeypatch.setattr(engine, "installed_engine", lambda: engine.InstalledEngine("vllm", "0.0.0+fake"))
    monkeypatch.setattr(process, "spawn", recording_spawn)
    yield engines
    for pgid in engines.pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, 0)


def make_plan(
    tmp_path: Path,
    start_timeout_s: float = 30,
    replicas: int = 1,
    router: bool = False,
    supervise: bool = False,
    local: str = "",
) -> Plan:
    """A local Plan of a one-file model, its cache under ``tmp_path``, on free ports (without the router and the
    supervisor unless asked: most tests here are about the engines' process groups); ``local``: more keys of
    ``local``, as YAML flow text (``surge: 0``)."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\0" * 4096)
    base = fake_engine.free_ports(2 * replicas + 5)  # the router, the replicas, replacements, scaled-up ones
    text = (
        "name: fake\n"
        f"model: {{source: {model.as_uri()}, served_name: {SERVED}}}\n"
        f"cache: {{dir: {tmp_path / 'cache'}}}\n"
        f"local: {{base_port: {base}, start_timeout_s: {start_timeout_s}, prefetch: false, "
        f"supervise: {str(supervise).lower()}{', ' + local if local else ''}}}\n"
        f"replicas: {replicas}\n"
        f"router: {{enabled: {str(router).lower()}}}\n"
    )
    return resolve(parse_spec(text), spec_dir=tmp_path)


def test_up_status_down_runs_and_stops_the_whole_group(tmp_path: Path, engines: Engines) -> None:
    """preflight passes -> up staged the model and the replica is healthy -> state.json records it (role engine,
    the leader's start time) -> a second preflight says 'already running' -> down stops every process of the
    group (the engine and its EngineCore child) and clears the state."""
    engines.flags = ("--engine-core",)
    plan = make_plan(tmp_path)
    target = LocalTarget(plan)
    findings = asyncio.run(target.preflight())
    assert [(f.check, f.severity) for f in findings] == [("engine", "pass"), ("ports", "pass")]

    result = asyncio.run(target.up())
    assert [(r.index, r.url, r.role) for r in result.replicas] == [(0, plan.endpoints[0], "engine")]
    assert (plan.model_dir / "model.safetensors").is_file()
    [leader] = engines.pgids
    assert result.replicas[0].pid == leader
    members = process.group_members(leader)
    assert sorted(members) == sorted([leader, core_pid(plan.run_dir / "replica-0.log")])  # API server, EngineCore

    [status] = asyncio.run(target.status())
    assert (status.alive, status.healthy, status.left_behind, status.state) == (True, True, 0, "healthy")
    [record] = target.running()
    assert (record.role, record.pid, record.port) == ("engine", leader, plan.ports[0])
    on_disk = json.loads(state_path(plan.run_dir).read_text())["processes"]
    assert [(r["role"], r["pid"], r["start_ticks"]) for r in on_disk] == [
        ("engine", leader, process.start_ticks(leader))
    ]

    async def urls() -> list[str]:
        async with target.endpoints() as found:
            return found

    assert asyncio.run(urls()) == plan.endpoints
    with pytest.raises(TargetError, match="already running") as info:
        asyncio.run(target.preflight())
    assert info.value.fix and "vllm-fleet down" in info.value.fix

    stopped = asyncio.run(target.down())
    assert [r.pid for r in stopped] == [leader]
    assert not any(alive(pid) for pid in members)
    assert process.group_members(leader) == []
    assert not state_path(plan.run_dir).exists()
    assert target.running() == [] and asyncio.run(target.status()) == []


def test_an_engine_that_dies_while_loading_raises_with_the_log_tail_and_leaves_nothing(
    tmp_path: Path, engines: Engines
) -> None:
    """No line of its log says why (no exception, no usage error): EngineError names the replica and the exit
    code, its details are the log's tail (the command line, then what the engine wrote); no process of the
    group is left and there is no state file."""
    engines.flags = ("--exit-after", "0", "--engine-core")
    plan = make_plan(tmp_path)
    with pytest.raises(EngineError) as info:
        asyncio.run(LocalTarget(plan).up())
    assert info.value.message == f"replica 0 (port {plan.ports[0]}) exited with code 1 before it became healthy"
    details = info.value.details or ""
    assert details.startswith(f"$ {' '.join(fake_engine.argv(plan.ports[0]))}")
    assert (
        details.splitlines()[-1]
        == "fake engine: exiting before serving (--exit-after 0), as an engine that fails while it loads"
    )
    assert info.value.fix == f"read the log: {plan.run_dir / 'replica-0.log'}"
    [leader] = engines.pgids
    core = core_pid(plan.run_dir / "replica-0.log")  # started before the crash, left behind by it
    assert not alive(leader) and not alive(core) and process.group_members(leader) == []
    assert not state_path(plan.run_dir).exists()


def test_an_engine_that_rejects_its_flags_raises_with_its_own_error_line(tmp_path: Path, engines: Engines) -> None:
    """The engine says why it stopped (argparse's ``error:`` line): that line is the error, not a traceback;
    nothing is left running and there is no state file."""
    engines.flags = ("--no-such-flag",)
    plan = make_plan(tmp_path)
    with pytest.raises(EngineError) as info:
        asyncio.run(LocalTarget(plan).up())
    assert info.value.message == (
        f"replica 0 (port {plan.ports[0]}) exited with code 2 before it became healthy: "
        "fake_engine.py: error: unrecognized arguments: --no-such-flag"
    )
    assert info.value.details is None
    assert info.value.fix == f"read the log: {plan.run_dir / 'replica-0.log'}"
    [leader] = engines.pgids
    assert not alive(leader) and process.group_members(leader) == []
    assert not state_path(plan.run_dir).exists()


@pytest.mark.parametrize(
    "flags",
    [("--start-delay-s", "60"), ("--health-status", "503")],
    ids=["port-never-opens", "health-503"],
)
def test_an_engine_never_healthy_within_start_timeout_raises_and_leaves_nothing(
    tmp_path: Path, engines: Engines, flags: tuple[str, ...]
) -> None:
    """Still loading (port closed) or answering 503 when start_timeout_s runs out: EngineError, the group is
    stopped (the leader and its EngineCore child) and the state is cleared."""
    engines.flags = (*flags, "--engine-core")
    plan = make_plan(tmp_path, start_timeout_s=1)
    started = time.monotonic()
    with pytest.raises(EngineError) as info:
        asyncio.run(LocalTarget(plan).up())
    assert info.value.message.startswith("replica 0 did not become healthy within 1 s")
    assert time.monotonic() - started < 4
    assert info.value.fix and "local.start_timeout_s" in info.value.fix
    [leader] = engines.pgids
    core = core_pid(plan.run_dir / "replica-0.log")
    assert not alive(leader) and not alive(core) and process.group_members(leader) == []
    assert not state_path(plan.run_dir).exists()


def test_down_after_the_leader_was_sigkilled_stops_the_rest_of_its_group(tmp_path: Path, engines: Engines) -> None:
    """The API server killed (kill -9), its EngineCore left: status says dead, down still finds the group as
    ours, stops the EngineCore and clears the state."""
    engines.flags = ("--engine-core",)
    plan = make_plan(tmp_path)
    target = LocalTarget(plan)
    asyncio.run(target.up())
    [leader] = engines.pgids
    core = core_pid(plan.run_dir / "replica-0.log")
    assert sorted(process.group_members(leader)) == sorted([leader, core])
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: not alive(leader), what="the leader to die")
    assert alive(core)

    [status] = asyncio.run(target.status())
    assert (status.alive, status.healthy, status.left_behind) == (False, False, 1)
    assert status.state.startswith("dead, 1 of its processes still running")
    assert target.running() == []
    stopped = asyncio.run(target.down())
    assert [r.pid for r in stopped] == [leader]
    assert not alive(core) and process.group_members(leader) == []
    assert not state_path(plan.run_dir).exists()
