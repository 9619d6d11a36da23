"""A rolling restart of local replicas, with no failed request: one replica at a time, through the router.

With a surge of 1 (``local.surge``, or auto with room for one more replica: room.py), for each
replica: start its replacement on another port (``local.base_port`` + 1 + i, or that + replicas),
with the spec as it is now (changed engine settings or a new model revision take effect), wait
until it is healthy and verified, publish it beside the old one, drain the old one through the
router (no new requests; in-flight ones finish), publish without it, stop it. The machine holds one
extra replica meanwhile.

With a surge of 0 (the Kubernetes Deployment's maxSurge 0, for a machine with room for only
``replicas`` engines), for each replica: drain it through the router first (the others serve),
publish without it, stop it, start the replacement on its port, wait until it is healthy and
verified, publish it. A replacement that fails gives way to the old command line again. With one
replica nobody would serve meanwhile: refused.

A replacement is not the supervisor's until it is published.
"""

from __future__ import annotations

from collections.abc import Callable

from vllm_fleet.errors import EngineError, FleetError, TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import QUIET, Replica, Reporter
from vllm_fleet.targets.local import replicas, room
from vllm_fleet.targets.local.state import ProcessRecord, read_state

drain = replicas.drain  # where it was first written


def engines_and_router(plan: Plan) -> tuple[list[ProcessRecord], ProcessRecord]:
    """The running set's engine records (by index) and its router; an error when there is nothing to change."""
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
    return engines, router


async def restart(
    plan: Plan, report: Reporter = QUIET, which: Callable[[ProcessRecord], bool] | None = None
) -> list[Replica]:
    """Replace the running replicas of ``plan`` (those ``which`` picks; default: all); returns the replacements."""
    engines, router = engines_and_router(plan)
    todo = [r for r in engines if which is None or which(r)]
    if not todo:
        return []
    choice = surge_for(plan, len(engines))
    report.line(f"restart: surge {choice.surge} ({choice.why})")
    done = []
    for old in todo:
        if choice.surge == 1:
            new = await _surge_one(plan, router.url, old, report)
        else:
            new = await _drain_first(plan, router.url, old, report)
        report.replica(old.index, new.url, "healthy")
        done.append(new.replica)
    return done


def surge_for(plan: Plan, serving: int) -> room.SurgeChoice:
    """The restart's surge with ``serving`` replicas; refused when it would leave none serving."""
    choice = room.decide(plan)
    if choice.surge == 0 and serving == 1:
        raise TargetError(
            f"{plan.name} runs one replica and a restart with surge 0 ({choice.why}) would stop it before its "
            "replacement serves: every request meanwhile would fail",
            fix="free memory for a second replica, or set local.surge: 1, or replicas: 2 (the others serve while "
            "one is replaced)",
        )
    return choice


def _serving(plan: Plan) -> list[str]:
    return [r.url for r in read_state(plan.run_dir) if r.role == "engine" and r.supervised]


async def _surge_one(plan: Plan, router: str, old: ProcessRecord, report: Reporter) -> ProcessRecord:
    """The replacement beside the old replica first, then the old one drained and stopped."""
    report.phase(f"restart: replacing replica {old.index} ({old.url})")
    taken = {r.port for r in read_state(plan.run_dir)}
    label = f"the replacement of replica {old.index}"
    try:
        new = await replicas.start_verified(plan, old.index, replicas.slot(plan, old.index, taken), report, label=label)
    except EngineError as exc:
        raise EngineError(f"{exc.message}; the old replica keeps serving", fix=exc.fix, details=exc.details) from exc
    serving = _serving(plan)
    await replicas.join(plan, router, [new], serving)
    report.phase(f"restart: draining replica {old.index} ({old.url}) through the router")
    await replicas.retire(plan, router, [old], [u for u in [*serving, new.url] if u != old.url], report)
    return new


async def _drain_first(plan: Plan, router: str, old: ProcessRecord, report: Reporter) -> ProcessRecord:
    """The old replica drained and stopped first (the others serve), then its replacement on its port."""
    report.phase(f"restart: draining replica {old.index} ({old.url}) through the router before its replacement")
    keep = [u for u in _serving(plan) if u != old.url]
    await replicas.retire(plan, router, [old], keep, report)
    report.phase(f"restart: replacing replica {old.index} ({old.url})")
    try:
        label = f"the replacement of replica {old.index}"
        new = await replicas.start_verified(plan, old.index, old.port, report, label=label)
    except FleetError as exc:
        restored = await _restore(plan, router, old, keep, report)
        raise EngineError(f"{exc.message}; {restored}", fix=exc.fix, details=exc.details) from exc
    await replicas.join(plan, router, [new], keep)
    return new


async def _restore(plan: Plan, router: str, old: ProcessRecord, keep: list[str], report: Reporter) -> str:
    """Start ``old``'s command line again on its port (its replacement failed); says how that went."""
    report.line(f"replica {old.index}: its replacement failed, starting it again with its previous settings")
    try:
        again = await replicas.start_verified(
            plan, old.index, old.port, report, label=f"replica {old.index} again", argv=old.argv, env=old.env
        )
        await replicas.join(plan, router, [again], keep)
    except FleetError as exc:
        return f"replica {old.index} is down (starting it again failed too: {exc.message}); the others serve"
    return f"replica {old.index} runs again with its previous settings"
