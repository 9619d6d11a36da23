"""``up`` of a running spec whose replicas or engine settings changed: scale and roll, dropping no request.

More replicas: the new ones start (replica i on ``local.base_port`` + 1 + i, or the next free port of
its series when a rolled replica holds that one), each healthy and verified, then all are published
and handed to the supervisor. Fewer: the highest-index ones are drained through the router,
published away, stopped. Kept replicas whose engine settings (argv or environment) changed are
rolled (rolling.py): after the new ones serve when growing, before the extra ones go when shrinking,
so a drain-first restart always has others serving.
"""

from __future__ import annotations

import asyncio

from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import QUIET, Replica, Reporter
from vllm_fleet.targets.local import replicas, rolling
from vllm_fleet.targets.local.state import ProcessRecord, read_state


async def apply(plan: Plan, report: Reporter = QUIET) -> tuple[list[Replica], list[str]]:
    """Bring the running set to ``plan``: its replica count and settings. Returns the engines and notes."""
    engines, _ = rolling.engines_and_router(plan)
    want, notes = plan.spec.replicas, []

    def kept_and_changed(record: ProcessRecord) -> bool:
        return record.index < want and replicas.differs(plan, record)

    changed = sum(kept_and_changed(r) for r in engines)
    if len(engines) < want:
        await grow(plan, want, report)
        notes.append(f"scaled from {len(engines)} to {want} replicas")
    rolled = await rolling.restart(plan, report, which=kept_and_changed) if changed else []
    if len(engines) > want:
        await shrink(plan, want, report)
        notes.append(f"scaled from {len(engines)} to {want} replicas")
    if rolled:
        notes.append(f"replaced {len(rolled)} replica(s) one at a time")
    running = sorted((r for r in read_state(plan.run_dir) if r.role == "engine"), key=lambda r: r.index)
    return [r.replica for r in running], notes


async def grow(plan: Plan, want: int, report: Reporter) -> None:
    """Start replicas up to ``want``, verify each, publish them beside the serving ones."""
    engines, router = rolling.engines_and_router(plan)
    missing = sorted(set(range(want)) - {r.index for r in engines})
    report.line(f"scale: {len(engines)} -> {want} replicas: starting replica(s) {', '.join(map(str, missing))}")
    taken = {r.port for r in read_state(plan.run_dir)}
    ports = {}
    for index in missing:
        ports[index] = replicas.slot(plan, index, taken)
        taken.add(ports[index])
    try:
        async with asyncio.TaskGroup() as group:  # one fails: the others are cancelled, and each stops its own
            tasks = [
                group.create_task(replicas.start_verified(plan, i, ports[i], report, label=f"new replica {i}"))
                for i in missing
            ]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None  # one error, as the caller expects (FleetError, or an interrupt)
    new = [task.result() for task in tasks]
    serving = [r.url for r in engines if r.supervised]
    report.phase(f"scale: routing to {len(serving) + len(new)} replicas")
    await replicas.join(plan, router.url, new, serving)
    for record in new:
        report.replica(record.index, record.url, "healthy")


async def shrink(plan: Plan, want: int, report: Reporter) -> None:
    """Drain the replicas of index ``want`` and above through the router, publish without them, stop them."""
    engines, router = rolling.engines_and_router(plan)
    leaving = [r for r in engines if r.index >= want]
    keep = [r.url for r in engines if r.index < want and r.supervised]
    report.phase(f"scale: {len(engines)} -> {want} replicas: draining replica(s) "
                 f"{', '.join(str(r.index) for r in leaving)} through the router")  # fmt: skip
    await replicas.retire(plan, router.url, leaving, keep, report)
