"""up, down and status of a Plan, the same flow for every target.

``up`` = preflight -> target.up -> endpoints -> verify (-> register with the router, to come).
A failed preflight check stops before anything starts; a failed verify leaves the replicas
running (the person looks at them) and is reported, not raised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vllm_fleet.errors import TargetError
from vllm_fleet.plan import Plan
from vllm_fleet.targets import target_for
from vllm_fleet.targets.base import QUIET, Finding, Replica, ReplicaStatus, Reporter, UpResult
from vllm_fleet.verify import VerifyReport, VerifySettings, verify_all


@dataclass(frozen=True)
class UpOutcome:
    """What `up` did: the preflight findings, what the target started, and the verify reports."""

    preflight: list[Finding]
    started: UpResult
    reports: list[VerifyReport] = field(default_factory=list)
    verified: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoints": [r.url for r in self.started.replicas],
            "verified": self.verified,
            **self.started.extra,
            "verify": [r.to_dict() for r in self.reports],
        }


async def up(plan: Plan, report: Reporter = QUIET, *, verify: bool = True) -> UpOutcome:
    """Start ``plan`` on its target and gate it on verify."""
    target = target_for(plan)
    findings = await target.preflight()
    if failed := [f for f in findings if f.severity == "fail"]:
        raise TargetError(f"preflight: {failed[0].check}: {failed[0].detail}", fix=failed[0].fix)
    started = await target.up(report)
    for note in started.notes:
        report.line(note)
    if not verify:
        return UpOutcome(findings, started)
    async with target.endpoints() as urls:
        reports = await verify_all(urls, VerifySettings.of(plan), progress=report.phase)
    return UpOutcome(findings, started, reports, verified=all(r.passed for r in reports))


async def down(plan: Plan) -> list[Replica]:
    """Stop everything ``up`` started for ``plan``; returns what was running."""
    return await target_for(plan).down()


async def status(plan: Plan) -> list[ReplicaStatus]:
    """Each replica of ``plan`` and its state."""
    return await target_for(plan).status()
