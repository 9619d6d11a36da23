"""A rolling restart of local replicas, with no failed request: one replica at a time, through the router.

For each replica: start its replacement on the other port of its pair (``local.base_port``
+ 1 + i, or that + replicas), with the spec as it is now (changed engine settings or a new
model revision take effect), wait until it is healthy and verified, publish it beside the
old one, drain the old one through the router (no new requests; in-flight ones finish),
publish without it, stop it. The machine holds one extra replica meanwhile (a surge of 1);
the replacement is not the supervisor's until it is published.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import replace

import httpx

from vllm_fleet import engine
from vllm_fleet.errors import EngineError, TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import QUIET, Replica, Reporter
from vllm_fleet.targets.local import process, routing
from vllm_fleet.targets.local.health import wait_healthy
from vllm_fleet.targets.local.state import ProcessRecord, add_record, read_state, replace_record

DRAIN_POLL_S = 0.2


async def restart(plan: Plan, report: Reporter = QUIET) -> list[Replica]:
    """Replace every running replica of ``plan``; returns the replacements."""
    records = read_state(plan.run_dir)
    engines = sorted((r for r in records if r.role == "engine"), key=lambda r: r.index)
    router = next((r for r in records if r.role == "router"), None)
    if not engines:
        raise TargetError(f"{plan.name} is not running", fix="start it: vllm-fleet up SPEC")
    if router is None:
        raise TargetError(
            f"{plan.name} runs without the router: a restart would drop the requests of the replica it stops",
            fix="set router.enabled: true (the default), then vllm-fleet down SPEC and up SPEC",
        )
    done = []
    for old in engines:
        report.phase(f"restart: replacing replica {old.index} ({old.url})")
        new = await _start_replacement(plan, old, report)
        serving = [r.url for r in read_state(plan.run_dir) if r.role == "engine" and r.supervised]
        await routing.publish(plan, router.url, [*serving, new.url])
        replace_record(plan.run_dir, new, replace(new, supervised=True))
        report.phase(f"restart: draining replica {old.index} ({old.url}) through the router")
        left = await drain(router.url, old.url, plan.spec.availability.drain_timeout_s)
        if left:
            report.line(f"replica {old.index}: {left} request(s) still in flight after the drain timeout")
        await routing.publish(plan, router.url, [u for u in [*serving, new.url] if u != old.url])
        replace_record(plan.run_dir, old, None)  # first, so the supervisor does not restart it
        await process.stop_groups([old.pid])
        report.replica(old.index, new.url, "healthy")
        done.append(new.replica)
    return done


async def _start_replacement(plan: Plan, old: ProcessRecord, report: Reporter) -> ProcessRecord:
    from vllm_fleet.verify import VerifySettings, verify_all

    port = _pair_port(plan, old)
    process.check_port_free(plan.spec.local.host, port)
    argv = engine.local_command(plan.spec, model_dir=str(plan.model_dir), port=port)
    log = plan.run_dir / f"replica-{old.index}-{port}.log"
    proc = process.spawn(argv, os.environ | engine.vllm_env(plan.spec), log)
    ticks = process.start_ticks(proc.pid) or 0
    new = ProcessRecord("engine", old.index, proc.pid, ticks, port, plan.url_of(port), str(log), argv, 0, False)
    add_record(plan.run_dir, new)
    try:
        await wait_healthy([new], [proc], plan.spec.local.start_timeout_s, report)
        [verified] = await verify_all([new.url], VerifySettings.of(plan), progress=report.phase)
        if not verified.passed:
            failed = next(c for c in verified.checks if not c.ok)
            raise EngineError(
                f"the replacement of replica {old.index} failed verify ({failed.name}: {failed.detail}); "
                "the old replica keeps serving",
                fix=f"read its log: {log}",
            )
    except BaseException:
        replace_record(plan.run_dir, new, None)
        await process.stop_groups([new.pid])
        raise
    return new


def _pair_port(plan: Plan, old: ProcessRecord) -> int:
    """Replica i lives on ``ports[i]`` or ``ports[i] + replicas``, and moves to the other one."""
    home = plan.ports[old.index] if old.index < len(plan.ports) else plan.ports[-1] + 1 + old.index
    return home + len(plan.ports) if old.port == home else home


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
