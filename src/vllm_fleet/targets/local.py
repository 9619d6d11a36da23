"""Local target: vLLM replicas as processes on this machine.

Each replica is started in its own session (process group), so stopping it
stops vLLM's engine-core children too. State lives in ``<run_dir>/state.json``;
a replica is "running" only if its pid is alive AND still runs vLLM's API
server (pids get reused).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from vllm_fleet import engine
from vllm_fleet.errors import EngineError, FleetError, TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.weights import cache
from vllm_fleet.weights.prefetch import PrefetchHandle, PrefetchResult, start_prefetch

STATE = "state.json"
LOG_TAIL_LINES = 25
STOP_GRACE_S = 20.0

Progress = Callable[[int, str], None]  # (replica index, what it is doing)


@dataclass(frozen=True)
class Replica:
    index: int
    pid: int
    port: int
    url: str
    log: str


@dataclass(frozen=True)
class Started:
    """What `start` brought up, and what the prefetch beside it did (None when off)."""

    replicas: list[Replica]
    prefetch: PrefetchResult | None


@dataclass(frozen=True)
class ReplicaStatus:
    replica: Replica
    alive: bool
    healthy: bool


def read_state(plan: Plan) -> list[Replica]:
    try:
        raw = json.loads((plan.run_dir / STATE).read_text())
    except (OSError, ValueError):
        return []
    return [Replica(**r) for r in raw["replicas"]]


def running(plan: Plan) -> list[Replica]:
    """Replicas of ``plan`` whose vLLM process is still alive."""
    return [r for r in read_state(plan) if _is_vllm(r.pid)]


def ensure_not_running(plan: Plan) -> None:
    """Refuse to start ``plan`` twice."""
    if alive := running(plan):
        raise TargetError(
            f"{plan.name} is already running ({len(alive)} replica(s), first at {alive[0].url})",
            fix=f"use it, or stop it first: vllm-fleet down SPEC{' --env ' + plan.env if plan.env else ''}",
        )


def start(plan: Plan, progress: Progress | None = None) -> Started:
    """Start every replica and wait until each answers /health; on any failure stop them all.

    With ``local.prefetch`` the weights are read into the page cache while vLLM starts,
    so its loader finds them in memory (issue 6).
    """
    ensure_not_running(plan)
    engine.installed_engine()
    if not cache.is_complete(plan.model_dir):
        raise EngineError(
            f"{plan.model_dir} has no completion marker: the model is not fully staged",
            fix="run `vllm-fleet stage` for this spec (up stages before it starts)",
        )
    for port in plan.ports:
        _check_port_free(plan.spec.local.host, port)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    replicas: list[Replica] = []
    procs: list[subprocess.Popen] = []
    warming = start_prefetch(plan.model_dir) if plan.spec.local.prefetch else None
    try:
        for index, port in enumerate(plan.ports):
            log = plan.run_dir / f"replica-{index}.log"
            proc = _spawn(plan, port, log)
            procs.append(proc)
            replicas.append(Replica(index, proc.pid, port, plan.endpoints[index], str(log)))
            _write_state(plan, replicas)
        _wait_healthy(plan, replicas, procs, progress)
    except BaseException:
        _stop_all(replicas)
        (plan.run_dir / STATE).unlink(missing_ok=True)
        raise
    finally:
        if warming:
            warming.stop()  # the engine has its weights (or failed): nothing left to warm
    return Started(replicas, _prefetch_result(warming, plan) if warming else None)


def _prefetch_result(warming: PrefetchHandle, plan: Plan) -> PrefetchResult:
    """The prefetch's result; its failure is reported, never fatal (the engine reads the weights anyway)."""
    try:
        return warming.wait()
    except FleetError as exc:
        return PrefetchResult(str(plan.model_dir), 0, 0, 0, 0, 0.0, complete=False, stopped=exc.message)


def stop(plan: Plan) -> list[Replica]:
    """Stop every replica of ``plan``; returns those that were running."""
    replicas = read_state(plan)
    alive = [r for r in replicas if _is_vllm(r.pid)]
    _stop_all(alive)
    (plan.run_dir / STATE).unlink(missing_ok=True)
    return alive


def status(plan: Plan) -> list[ReplicaStatus]:
    out = []
    for r in read_state(plan):
        alive = _is_vllm(r.pid)
        out.append(ReplicaStatus(r, alive, alive and _healthy(r.url)))
    return out


def log_tail(path: str | Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _spawn(plan: Plan, port: int, log: Path) -> subprocess.Popen:
    argv = engine.local_command(plan, model_dir=str(plan.model_dir), port=port)
    env = os.environ | engine.vllm_env(plan)
    with open(log, "wb") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )


def _wait_healthy(
    plan: Plan, replicas: list[Replica], procs: list[subprocess.Popen], progress: Progress | None
) -> None:
    deadline = time.monotonic() + plan.spec.local.start_timeout_s
    pending = set(range(len(replicas)))
    while pending:
        for i in sorted(pending):
            r, proc = replicas[i], procs[i]
            if proc.poll() is not None:
                raise EngineError(
                    f"replica {i} (port {r.port}) exited with code {proc.returncode} before it became healthy",
                    fix=f"read the log: {r.log}",
                    details=log_tail(r.log),
                )
            if _healthy(r.url):
                pending.discard(i)
                if progress:
                    progress(i, "healthy")
            elif progress:
                progress(i, _last_line(r.log))
        if pending and time.monotonic() > deadline:
            i = min(pending)
            raise EngineError(
                f"replica {i} did not become healthy within {plan.spec.local.start_timeout_s:.0f} s",
                fix=f"raise local.start_timeout_s or read the log: {replicas[i].log}",
                details=log_tail(replicas[i].log),
            )
        if pending:
            time.sleep(0.5)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _last_line(log: str) -> str:
    tail = log_tail(log, 1)
    return tail[-100:] if tail else "starting"


def _is_vllm(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return engine.API_SERVER_MODULE.encode() in cmdline


def _stop_all(replicas: list[Replica]) -> None:
    """SIGTERM each replica's process group, then SIGKILL what is left after the grace period."""
    groups = [r.pid for r in replicas]
    for pgid in groups:
        _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
        _reap(groups)
        time.sleep(0.2)
    for pgid in groups:
        _signal_group(pgid, signal.SIGKILL)
    _reap(groups, block=True)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reap(pgids: list[int], block: bool = False) -> None:
    """Collect group leaders that are our own children, so they do not linger as zombies."""
    for pid in pgids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0 if block else os.WNOHANG)


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise TargetError(
                f"port {port} on {host} is in use", fix="stop what uses it or set local.base_port in the spec"
            ) from exc


def _write_state(plan: Plan, replicas: list[Replica]) -> None:
    cache.write_atomic(plan.run_dir / STATE, json.dumps({"replicas": [asdict(r) for r in replicas]}, indent=2).encode())
