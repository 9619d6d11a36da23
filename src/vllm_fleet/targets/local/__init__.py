"""The local target, the embedded default: vLLM replicas as processes on this machine.

    state.py    what was started (role, process group, leader start time), in <run_dir>/state.json
    process.py  spawn in a new session, recognise our groups (pids get reused), stop whole groups
    health.py   wait until each replica answers /health, with the log's tail when one fails
    routing.py  the router in front of the replicas (``router.enabled``): start it, publish to it
    supervisor.py  the background process that restarts a crashed replica
    replicas.py one replica joining (start, verify, publish) or leaving (drain, publish without, stop)
    rolling.py  restart: replace the replicas one at a time, draining each through the router
    room.py     local.surge auto: does free memory hold one more replica during a restart?
    scaling.py  up of a running spec: more or fewer replicas, the changed ones rolled

``up`` stages the weights into the cache, then starts every replica (prefetching the
weights into the page cache beside vLLM's start when ``local.prefetch``) and the router
on ``local.base_port``, and waits for all of them; on any failure or interrupt it stops
every group it started. ``publish`` (after verify) makes the replicas routable. ``up`` of a
running, routed spec whose replica count, engine command line or environment changed scales
and rolls it instead (scaling.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from vllm_fleet import engine
from vllm_fleet.errors import EngineError, FleetError, TargetError
from vllm_fleet.plan.model import check_engine_fits_model, config_in
from vllm_fleet.targets.base import (
    QUIET,
    Diagnosis,
    Finding,
    Replica,
    ReplicaStatus,
    Reporter,
    Target,
    UpResult,
    not_built,
)
from vllm_fleet.targets.local import process, replicas, rolling, routing, scaling, supervisor
from vllm_fleet.targets.local.health import wait_healthy
from vllm_fleet.targets.local.state import ProcessRecord, add_record, clear_state, read_state, write_state
from vllm_fleet.weights import cache
from vllm_fleet.weights.prefetch import PrefetchHandle, PrefetchResult, start_prefetch
from vllm_fleet.weights.stage import stage_async
from vllm_fleet.wire.health import is_healthy


class LocalTarget(Target):
    """A Plan as processes on this machine."""

    def running(self) -> list[ProcessRecord]:
        """Records whose process group is still ours and alive."""
        return [r for r in read_state(self.plan.run_dir) if process.leader_alive(r.pid, r.start_ticks)]

    _changing = False  # up scales or replaces running replicas (count or settings changed) instead of starting

    async def preflight(self) -> list[Finding]:
        plan, findings = self.plan, []
        if alive := self.running():
            routed = any(r.role == "router" for r in alive)
            if routed and (what := self._change(alive)):
                self._changing = True
                return [Finding("running", "pass", what)]
            raise TargetError(
                f"{plan.name} is already running ({len(alive)} process(es), first at {alive[0].url})"
                + (" with these settings" if routed else ""),
                fix="use it; `vllm-fleet restart SPEC` replaces the replicas one at a time without dropping a "
                f"request; or stop it: vllm-fleet down SPEC{' --env ' + plan.env if plan.env else ''}",
            )
        installed = engine.installed_engine()
        findings.append(Finding("engine", "pass", f"{installed.distribution} {installed.version}"))
        ports = ([plan.router_port] if plan.router_port is not None else []) + list(plan.ports)
        for port in ports:
            process.check_port_free(plan.spec.local.host, port)
        findings.append(Finding("ports", "pass", f"{', '.join(map(str, ports))} free on {plan.spec.local.host}"))
        return findings

    def _change(self, alive: list[ProcessRecord]) -> str | None:
        """What up would change in the running set (None: nothing): its replica count, or the engine command line
        or environment (engine.env, kv_cache_space_gib) of a replica it keeps."""
        engines, want = [r for r in alive if r.role == "engine"], self.plan.spec.replicas
        changes = []
        if len(engines) != want:
            changes.append(f"{len(engines)} replica(s) running, the spec wants {want}: up scales")
        if any(r.index < want and replicas.differs(self.plan, r) for r in engines):
            # Refused now, not after staging, when the roll would leave nobody serving (scaling grows first).
            choice = rolling.surge_for(self.plan, max(len(engines), want))
            changes.append(f"running with other engine settings: up replaces the replicas one at a time, "
                           f"surge {choice.surge}")  # fmt: skip
        return "; ".join(changes) or None

    async def up(self, report: Reporter = QUIET) -> UpResult:
        await self._stage(report)
        if self._changing:
            running, notes = await scaling.apply(self.plan, report)
            return UpResult(running, notes=notes)
        plan = self.plan
        warming = start_prefetch(plan.model_dir) if plan.spec.local.prefetch else None
        try:
            replicas = await self._start(report)
        finally:
            if warming:
                await asyncio.to_thread(warming.stop)  # the engine has its weights (or failed): nothing to warm
        result = UpResult(replicas, extra={"prefetch": None})
        if warming:
            prefetched = _prefetch_result(warming, plan.model_dir)
            result.extra["prefetch"] = prefetched.to_dict()
            result.notes.append(_prefetch_line(prefetched))
        return result

    async def _stage(self, report: Reporter) -> None:
        plan = self.plan
        report.phase(f"staging {plan.source}")
        staged = await stage_async(plan.source, plan.model_dir, revision=plan.spec.model.revision)
        how = "cached" if staged.skipped else "staged"
        report.line(f"model: {plan.model_dir} ({staged.bytes_total / 1e6:.0f} MB, {how})")
        if not cache.is_complete(plan.model_dir):
            raise EngineError(
                f"{plan.model_dir} has no completion marker: the model is not fully staged",
                fix="run `vllm-fleet stage` for this spec (up stages before it starts)",
            )
        # A remote source's config.json is first readable now: check the engine settings against it.
        check_engine_fits_model(plan.spec, config_in(plan.model_dir), f"{plan.model_dir}/config.json")

    async def _start(self, report: Reporter) -> list[Replica]:
        plan = self.plan
        records: list[ProcessRecord] = []
        procs: list[subprocess.Popen] = []
        try:
            plan.run_dir.mkdir(parents=True, exist_ok=True)
            for index, port in enumerate(plan.ports):
                proc, record = replicas.spawn(plan, index, port, plan.run_dir / f"replica-{index}.log", supervised=True)
                procs.append(proc)
                records.append(record)
                write_state(plan.run_dir, records)
                report.replica(index, record.url, "starting")
            if plan.router_port is not None:
                await self._start_router(records)
            await wait_healthy(records[: len(procs)], procs, plan.spec.local.start_timeout_s, report)
            if plan.spec.local.supervise:
                self._start_supervisor()
        except BaseException:
            groups = [r.pid for r in records]
            for r in records:
                what = f"replica {r.index}" if r.role == "engine" else "the router"
                report.line(f"stopping {what} (pid {r.pid}); Ctrl-C again kills it at once")
            try:
                await process.stop_groups(groups, plan.stop_grace_s)
            finally:
                process.kill_groups(groups)  # also when a second Ctrl-C cut the graceful stop short
                clear_state(plan.run_dir)
            raise
        return [r.replica for r in records]

    async def _start_router(self, records: list[ProcessRecord]) -> None:
        """The router on ``local.base_port``; it routes nothing until ``publish``."""
        plan = self.plan
        assert plan.router_port is not None
        log = plan.run_dir / "router.log"
        proc = process.spawn(routing.router_command(plan), dict(os.environ), log)
        ticks = process.start_ticks(proc.pid) or 0
        url = plan.url_of(plan.router_port)
        record = ProcessRecord("router", 0, proc.pid, ticks, plan.router_port, url, str(log))
        records.append(record)
        write_state(plan.run_dir, records)
        await routing.wait_listening(url, proc, str(log))

    def _start_supervisor(self) -> None:
        """The background process that restarts a crashed replica (it outlives this command), each with the
        environment its record holds."""
        run_dir = self.plan.run_dir
        log = run_dir / "supervisor.log"
        proc = process.spawn(supervisor.command(run_dir), dict(os.environ), log)
        ticks = process.start_ticks(proc.pid) or 0
        add_record(run_dir, ProcessRecord("supervisor", 0, proc.pid, ticks, 0, "", str(log)))

    def client_endpoints(self, started: UpResult) -> list[str]:
        return self.plan.endpoints  # the router's, or each replica's when there is none

    async def publish(self, report: Reporter = QUIET) -> None:
        if self.plan.router_port is None:
            return
        report.phase("routing: registering the verified replicas with the router")
        engines = [r.url for r in read_state(self.plan.run_dir) if r.role == "engine"]
        await routing.publish(self.plan, self.plan.url_of(self.plan.router_port), engines)

    async def down(self, purge: bool = False) -> list[Replica]:
        records = read_state(self.plan.run_dir)
        ours = [r for r in records if process.is_ours(r.pid, r.start_ticks)]
        # The supervisor first: it must not restart the replicas being stopped.
        await process.stop_groups([r.pid for r in ours if r.role == "supervisor"])
        router = next((r.url for r in ours if r.role == "router"), None)
        if self.plan.router_port is not None or router:
            await routing.unpublish(self.plan, router)
        # vLLM finishes what it holds within its --shutdown-timeout; an idle one exits at once.
        await process.stop_groups([r.pid for r in ours if r.role != "supervisor"], self.plan.stop_grace_s)
        clear_state(self.plan.run_dir)
        return [r.replica for r in ours if r.role == "engine"]

    async def status(self) -> list[ReplicaStatus]:
        out = []
        records = read_state(self.plan.run_dir)
        async with httpx.AsyncClient(trust_env=False) as client:
            router = next((r for r in records if r.role == "router"), None)
            view = await routing.routed(client, router.url) if router else {}
            for r in records:
                alive = process.leader_alive(r.pid, r.start_ticks)
                healthy = alive and await is_healthy(client, r.url)
                left = 0 if alive or not process.is_ours(r.pid, r.start_ticks) else len(process.group_members(r.pid))
                seen = (view.get(r.url, "not routed") if view else "router unreachable") if router else None
                if r.role == "supervisor":
                    healthy = alive  # it serves nothing: alive is all it can be
                routed = seen if r.role == "engine" else None
                out.append(ReplicaStatus(r.replica, alive, healthy, left, routed=routed, restarts=r.restarts))
        return out

    @asynccontextmanager
    async def endpoints(self, direct: bool = False) -> AsyncIterator[list[str]]:
        """Where clients connect: the router, or (``direct``, or without one) each running replica; the spec's
        own ports when nothing of ours runs (an endpoint started by hand)."""
        running = self.running()
        router = [r.url for r in running if r.role == "router"]
        engines = [r.url for r in running if r.role == "engine"]
        if direct:
            yield engines or self.plan.replica_urls
        else:
            yield router or engines or self.plan.endpoints

    def logs(self) -> list[tuple[str, str]]:
        records = read_state(self.plan.run_dir)
        return [(f"replica {r.index}" if r.role == "engine" else r.role, r.log) for r in records]

    async def restart(self, report: Reporter = QUIET) -> UpResult:
        return UpResult(await rolling.restart(self.plan, report))

    async def doctor(self) -> list[Diagnosis]:
        raise not_built("local", "doctor", "read the replica logs under the run dir (vllm-fleet status SPEC)")


def _prefetch_result(warming: PrefetchHandle, model_dir: Path) -> PrefetchResult:
    """The prefetch's result; its failure is reported, never fatal (the engine reads the weights anyway)."""
    try:
        result = warming.wait()
    except FleetError as exc:
        return PrefetchResult(str(model_dir), 0, 0, 0, 0, 0.0, complete=False, stopped=exc.message)
    assert result is not None  # stopped and joined: it has finished
    return result


def _prefetch_line(p: PrefetchResult) -> str:
    return (
        f"prefetch: {p.bytes_read / 1e6:.0f} MB read into the page cache in {p.seconds:.1f} s "
        f"({p.gbps:.2f} GB/s, {p.bytes_cached_before / 1e6:.0f} MB were cached already)"
        + (f"; stopped: {p.stopped}" if p.stopped else "")
    )
