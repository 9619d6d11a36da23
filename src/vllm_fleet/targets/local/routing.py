"""The local router: its command line, waiting for it, and making verified replicas routable through it.

The router reads the registry (``plan.registry_url``): ``up`` registers the spec's replicas
there only once verify passed, so a model is routable only when it keeps its promise;
``down`` deregisters them first, so the router sends them nothing new while they stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time

import httpx

from vllm_fleet.errors import EngineError
from vllm_fleet.plan import Plan
from vllm_fleet.registry import REGISTRY_ENV
from vllm_fleet.targets.local.health import log_tail

START_TIMEOUT_S = 30.0
ROUTABLE_TIMEOUT_S = 15.0


def registry_url(plan: Plan) -> str:
    return os.environ.get(REGISTRY_ENV) or plan.registry_url


def router_command(plan: Plan) -> list[str]:
    """`vllm-fleet router` in front of the plan's replicas, reading the plan's registry (from the environment
    when VLLM_FLEET_REGISTRY is set: the router inherits it, and the command line, logged, stays clean)."""
    spec = plan.spec
    assert plan.router_port is not None
    registry = [] if os.environ.get(REGISTRY_ENV) else ["--registry", plan.registry_url]
    return [
        sys.executable, "-m", "vllm_fleet.cli", "router",
        "--host", spec.local.host,
        "--port", str(plan.router_port),
        "--policy", spec.router.policy,
        "--retries", str(spec.router.retries),
        *registry,
        "--shutdown-timeout", str(spec.availability.drain_timeout_s),
    ]  # fmt: skip


async def wait_listening(url: str, proc: subprocess.Popen, log: str) -> None:
    """Return once the router answers (its admin API; /health is 503 until a replica is routable)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    async with httpx.AsyncClient(trust_env=False, timeout=2) as client:
        while True:
            if proc.poll() is not None:
                raise EngineError(
                    f"the router exited with code {proc.returncode} while starting",
                    fix=f"read its log: {log}",
                    details=log_tail(log),
                )
            try:
                if (await client.get(f"{url}/admin/backends")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise EngineError(f"the router did not answer within {START_TIMEOUT_S:.0f} s", fix=f"read {log}")
            await asyncio.sleep(0.1)


async def publish(plan: Plan, router_url: str, replicas: list[str]) -> None:
    """Register ``replicas`` as the plan's deployment (replacing what it had), have the router read the
    registry now, and wait until it routes to every one of them."""
    from vllm_fleet.registry import Deployment, open_registry

    deployment = Deployment(plan.name, plan.served_name, tuple(replicas), plan.spec.router.policy)
    async with await open_registry(registry_url(plan)) as registry:
        await registry.register(deployment)
    wanted = set(replicas)
    deadline = time.monotonic() + ROUTABLE_TIMEOUT_S
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        await client.post(f"{router_url}/admin/registry/reload")
        while True:
            view = await routed(client, router_url)
            if all(view.get(url) == "healthy" for url in wanted):
                return
            if time.monotonic() > deadline:
                states = ", ".join(f"{url}: {view.get(url, 'not listed')}" for url in sorted(wanted))
                raise EngineError(
                    f"the router does not route to the verified replicas ({states})",
                    fix="read the router's log under the run dir (vllm-fleet status SPEC)",
                )
            await asyncio.sleep(0.2)


async def unpublish(plan: Plan, router_url: str | None) -> None:
    """Deregister the plan's replicas; a running router stops sending them new requests at once."""
    from vllm_fleet.registry import open_registry

    async with await open_registry(registry_url(plan)) as registry:
        await registry.deregister(plan.name)
    if router_url:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            with contextlib.suppress(httpx.TransportError):  # the router is gone already: nothing routes there
                await client.post(f"{router_url}/admin/registry/reload")


async def routed(client: httpx.AsyncClient, router_url: str) -> dict[str, str]:
    """Each backend's state as the router sees it (healthy, unhealthy, ejected, draining); {} if unreachable."""
    try:
        response = await client.get(f"{router_url}/admin/backends")
        return {b["url"]: b["state"] for b in response.json()["backends"]}
    except (httpx.TransportError, ValueError, KeyError):
        return {}
