"""What `verify` and `bench` point at: a URL as given, or the replicas of a spec, reached through its target;
and `verify` of either.

A spec's endpoints come from its target, never from local numbers: a Kubernetes spec
is reached through the cluster (a port-forward held open while the caller works), and
until that is built its target says so instead of testing 127.0.0.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from vllm_fleet.ops.lifecycle import measured_where_clients_are
from vllm_fleet.plan import Plan, load_plan
from vllm_fleet.targets import target_for
from vllm_fleet.targets.base import TargetOptions
from vllm_fleet.verify import Progress, VerifyReport, VerifySettings, verify_all
from vllm_fleet.wire.openai import server_root


@dataclass(frozen=True)
class Endpoints:
    """Server roots to load, and the Plan they belong to (None for a bare URL)."""

    urls: list[str]
    plan: Plan | None = None
    engines: list[str] | None = None  # the replicas themselves, when ``urls`` is a router in front of them


def is_url(where: str) -> bool:
    return where.startswith(("http://", "https://"))


@asynccontextmanager
async def open_endpoints(
    where: str, env: str | None = None, options: TargetOptions | None = None
) -> AsyncIterator[Endpoints]:
    """``where`` is a URL (server root or /v1 base) or a spec path; the endpoints stay reachable inside."""
    if is_url(where):
        yield Endpoints([server_root(where)])
        return
    plan = load_plan(where, env)
    target = target_for(plan, options)
    async with target.endpoints() as urls:
        if plan.router_port is None:  # no local router: the endpoints are the replicas
            yield Endpoints(urls, plan)
            return
        async with target.endpoints(direct=True) as engines:
            yield Endpoints(urls, plan, engines)


async def verify_endpoints(
    where: str,
    env: str | None = None,
    *,
    model: str | None = None,
    requests: int | None = None,
    slo_p95_s: float | None = None,
    progress: Progress | None = None,
    options: TargetOptions | None = None,
) -> list[VerifyReport]:
    """Verify a URL, or every replica of a spec against the spec's promise; arguments override the spec."""
    async with open_endpoints(where, env, options) as found:
        settings = VerifySettings.of(found.plan) if found.plan else VerifySettings()
        settings = dataclasses.replace(
            settings,
            model=model or settings.model,
            requests=requests or settings.requests,
            slo_p95_s=slo_p95_s or settings.slo_p95_s,
        )
        reports = await verify_all(found.urls, settings, progress)
    if found.plan is None or requests or slo_p95_s:  # a URL, or a promise given here: measured from here
        return reports
    return await measured_where_clients_are(target_for(found.plan, options), reports)
