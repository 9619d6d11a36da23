"""One local replica joining or leaving a running set: its command line, start and verify, drain and stop.

The rolling restart (rolling.py) and scaling (scaling.py) are made of these steps. A replica joins
unsupervised (the supervisor leaves it alone until it is published); it leaves by a drain through
the router (no new requests; in-flight ones finish), a publish without it, its record dropped (so
the supervisor does not bring it back), then SIGTERM: vLLM's ``--shutdown-timeout`` lets it finish
what reached it during the drain, and ``plan.stop_grace_s`` waits that long (plus a margin) before
SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx

from vllm_fleet import engine
from vllm_fleet.errors import EngineError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import Reporter
from vllm_fleet.targets.local import process, routing
from vllm_fleet.targets.local.health import wait_healthy
from vllm_fleet.targets.local.state import ProcessRecord, add_record, replace_record

DRAIN_POLL_S = 0.2


def command(plan: Plan, port: int) -> list[str]:
    """The engine's argv for a replica of ``plan`` on ``port``, with vLLM's graceful shutdown."""
    return engine.local_command(
        plan.spec,
        model_dir=str(plan.model_dir),
        port=port,
        shutdown_timeout_s=plan.spec.availability.shutdown_timeout_s,
    )


def differs(plan: Plan, record: ProcessRecord) -> bool:
    """Does ``record`` run another engine command line (ports aside) or environment than ``plan`` now?

    A record written before the environment was recorded (``env`` None) is compared by argv only."""
    if without_port(record.argv) != without_port(command(plan, 0)):
        return True
    return record.env is not None and record.env != engine.vllm_env(plan.spec)


def without_port(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip or arg == "--port":
            skip = not skip
            continue
        out.append(arg)
    return out


def slot(plan: Plan, index: int, taken: set[int]) -> int:
    """A port for replica ``index`` that no running record holds: its home, ``local.base_port`` + 1 + index,
    else the home plus ``replicas`` (a rolling restart's replacement moves between the two), and so on."""
    home, step = plan.ports[0] + index, len(plan.ports)
    return next(port for port in (home + k * step for k in range(len(taken) + 2)) if port not in taken)


def spawn(
    plan: Plan,
    index: int,
    port: int,
    log: Path,
    *,
    supervised: bool,
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
    append: bool = False,
) -> tuple[subprocess.Popen, ProcessRecord]:
    """Start replica ``index`` of ``plan`` on ``port`` (the spec's command and environment unless given); its
    process and its record (not yet written)."""
    argv = argv or command(plan, port)
    env = engine.vllm_env(plan.spec) if env is None else env
    proc = process.spawn(argv, os.environ | env, log, append=append)
    ticks = process.start_ticks(proc.pid) or 0
    url = plan.url_of(port)
    return proc, ProcessRecord("engine", index, proc.pid, ticks, port, url, str(log), argv, 0, supervised, env)


async def start_verified(
    plan: Plan,
    index: int,
    port: int,
    report: Reporter,
    *,
    label: str,
    argv: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> ProcessRecord:
    """Start replica ``index`` on ``port`` (the spec's command and environment unless given), wait until it is
    healthy and verified; it is recorded unsupervised. On any failure it is stopped and its record dropped."""
    from vllm_fleet.verify import VerifySettings, verify_all

    process.check_port_free(plan.spec.local.host, port)
    log = plan.run_dir / f"replica-{index}-{port}.log"
    # append: a replica it replaces may have logged there
    proc, new = spawn(plan, index, port, log, supervised=False, argv=argv, env=env, append=True)
    add_record(plan.run_dir, new)
    report.replica(index, new.url, "starting")
    try:
        await wait_healthy([new], [proc], plan.spec.local.start_timeout_s, report)
        [verified] = await verify_all([new.url], VerifySettings.of(plan), progress=report.phase)
        if not verified.passed:
            failed = next(c for c in verified.checks if not c.ok)
            raise EngineError(f"{label} failed verify ({failed.name}: {failed.detail})", fix=f"read its log: {log}")
    except BaseException:
        replace_record(plan.run_dir, new, None)
        await process.stop_groups([new.pid], plan.stop_grace_s)
        raise
    return new


async def join(plan: Plan, router_url: str, joining: list[ProcessRecord], serving: list[str]) -> None:
    """Publish ``joining`` beside ``serving``, then hand them to the supervisor."""
    await routing.publish(plan, router_url, [*serving, *(r.url for r in joining)])
    for record in joining:
        replace_record(plan.run_dir, record, replace(record, supervised=True))


async def retire(plan: Plan, router_url: str, leaving: list[ProcessRecord], keep: list[str], report: Reporter) -> None:
    """Drain ``leaving`` through the router, publish ``keep`` alone, drop their records, stop them."""
    lefts = await asyncio.gather(*(drain(router_url, r.url, plan.spec.availability.drain_timeout_s) for r in leaving))
    for record, left in zip(leaving, lefts, strict=True):
        if left:
            report.line(f"replica {record.index}: {left} request(s) still in flight after the drain timeout")
    await routing.publish(plan, router_url, keep)
    for record in leaving:
        replace_record(plan.run_dir, record, None)  # first, so the supervisor does not restart it
    await process.stop_groups([r.pid for r in leaving], plan.stop_grace_s)


async def drain(router_url: str, backend: str, timeout_s: float) -> int:
    """Mark ``backend`` draining in the router; wait until its in-flight requests reach 0 (or the drain
    timeout passes). Returns what was still in flight."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        (await client.post(f"{router_url}/admin/backends/drain", json={"url": backend})).raise_for_status()
        while True:
            found = (await client.get(f"{router_url}/admin/backends")).json()["backends"]
            left = next((b["in_flight"] for b in found if b["url"] == backend), 0)
            if left == 0 or time.monotonic() > deadline:
                return int(left)
            await asyncio.sleep(DRAIN_POLL_S)
