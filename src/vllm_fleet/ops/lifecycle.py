"""preflight, up, down, status and doctor of a Plan, the same flow for every target.

``up`` = preflight -> target.up -> verify each replica -> publish (register with the router).
A failed preflight check stops before anything starts or is written; a failed verify leaves
the replicas running but unrouted (the person looks at them) and is reported, not raised. The
latency check is the one the target measures where its clients are, when it measures one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm_fleet.errors import TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets import target_for
from vllm_fleet.targets.base import (
    QUIET,
    Diagnosis,
    Finding,
    Replica,
    ReplicaStatus,
    Reporter,
    Target,
    TargetOptions,
    UpResult,
)
from vllm_fleet.verify import VerifyReport, VerifySettings, verify_all


@dataclass(frozen=True)
class UpOutcome:
    """What `up` did: the preflight findings, what the target started, and the verify reports."""

    preflight: list[Finding]
    started: UpResult
    reports: list[VerifyReport] = field(default_factory=list)
    verified: bool = False
    endpoints: list[str] = field(default_factory=list)  # where clients connect (the router, when there is one)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoints": self.endpoints,
            "replicas": [r.url for r in self.started.replicas],
            "verified": self.verified,
            "preflight": [f.to_dict() for f in self.preflight],
            **self.started.extra,
            "verify": [r.to_dict() for r in self.reports],
        }


async def preflight(plan: Plan, options: TargetOptions | None = None) -> list[Finding]:
    """Every check the target can make before anything is written."""
    return await target_for(plan, options).preflight()


def preflight_failure(findings: list[Finding]) -> TargetError | None:
    """The error `up` stops with when a check failed (every failed check in its details), else None."""
    failed = [f for f in findings if f.severity == "fail"]
    if not failed:
        return None
    first = failed[0]
    details = "\n".join(f"{f.check}: {f.detail}" + (f" (fix: {f.fix})" if f.fix else "") for f in failed[1:])
    more = f" (and {len(failed) - 1} more failed check(s))" if len(failed) > 1 else ""
    return TargetError(f"preflight: {first.check}: {first.detail}{more}", fix=first.fix, details=details or None)


async def up(
    plan: Plan, report: Reporter = QUIET, *, verify: bool = True, options: TargetOptions | None = None
) -> UpOutcome:
    """Start ``plan`` on its target and gate it on verify."""
    target = target_for(plan, options)
    findings = await target.preflight()
    if error := preflight_failure(findings):
        raise error
    for warning in (f for f in findings if f.severity == "warn"):
        report.line(f"preflight warning: {warning.check}: {warning.detail}")
    started = await target.up(report)
    for note in started.notes:
        report.line(note)
    if verify:
        async with target.endpoints(direct=True) as urls:
            reports = await verify_all(urls, VerifySettings.of(plan), progress=report.phase)
        reports = await measured_where_clients_are(target, reports, report)
    else:
        reports = []
    verified = bool(reports) and all(r.passed for r in reports)
    if verified or not verify:
        await target.publish(report)
    return UpOutcome(findings, started, reports, verified=verified, endpoints=target.client_endpoints(started))


async def measured_where_clients_are(
    target: Target, reports: list[VerifyReport], report: Reporter = QUIET
) -> list[VerifyReport]:
    """The latency check the target measures where its clients are replaces the one made from here.

    Only when every other check passed: a replica that does not answer needs no latency figure.
    """
    if not reports or not all(c.ok for r in reports for c in r.checks if c.name != "slo"):
        return reports
    report.phase("measuring the latency SLO where the clients are")
    inside = await target.latency_check()
    return reports if inside is None else [r.with_check(inside) for r in reports]


async def down(plan: Plan, *, purge: bool = False, options: TargetOptions | None = None) -> list[Replica]:
    """Stop everything ``up`` started for ``plan``; returns what was running (or deleted)."""
    return await target_for(plan, options).down(purge=purge)


async def restart(plan: Plan, report: Reporter = QUIET, options: TargetOptions | None = None) -> UpResult:
    """Replace the replicas one at a time with the spec as it is now, dropping no request."""
    return await target_for(plan, options).restart(report)


async def status(plan: Plan, options: TargetOptions | None = None) -> list[ReplicaStatus]:
    """Each replica of ``plan`` and its state."""
    return await target_for(plan, options).status()


async def doctor(plan: Plan, options: TargetOptions | None = None) -> list[Diagnosis]:
    """What is wrong with ``plan``'s deployment, live, primary causes first."""
    return await target_for(plan, options).doctor()


def doctor_from(directory: Path) -> list[Diagnosis]:
    """What is wrong, read from a dump a colleague sent (kubectl get -o json Lists and container logs)."""
    from vllm_fleet.targets.kubernetes.cluster.doctor import diagnose, read_dump

    return diagnose(read_dump(directory))
