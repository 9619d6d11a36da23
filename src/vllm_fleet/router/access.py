"""The registry as the router uses it: which models are routable and by what policy, and who may call.

Several router replicas may share one registry (PostgreSQL): each re-reads it every
``refresh_s``, so a deployment registered by `up` becomes routable everywhere within that.
The per-key limits are counted in each replica's memory: with ``peers`` replicas behind one
Service (which spreads the requests evenly), each allows 1/peers of a key's limits, so the
key gets about its limit in all.
An API key's limits are cached for ``KEY_CACHE_S``; the cache holds hashes, never a secret.

A key comes as ``Authorization: Bearer <key>``, or, on a WebSocket handshake, as the subprotocol
``openai-insecure-api-key.<key>``: a browser cannot set headers on a WebSocket, and this is the form
OpenAI's Realtime API takes from one. The offer goes on to the backend unchanged, as Authorization does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from vllm_fleet.router.backends import Pool
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.router.policies import Policy, policy
from vllm_fleet.router.proxy import json_error
from vllm_fleet.wire.http1_server import Reply, Request

log = logging.getLogger("vllm_fleet.router")
KEY_CACHE_S = 30.0  # a deleted key stops working within this long on every router replica
MAX_CACHED_KEYS = 10_000  # bounded: a flood of wrong keys cannot grow it
BROWSER_KEY = "openai-insecure-api-key."  # a Sec-WebSocket-Protocol item: the key follows


class RegistryLink:
    """The router's view of a registry: routes into the pool, policies per model, keys and limits."""

    def __init__(
        self, url: str, pool: Pool, static_backends: Sequence[str], refresh_s: float = 5.0, peers: int = 1
    ) -> None:
        self.url = url
        self.peers = peers
        self.pool = pool
        self.static_backends = tuple(static_backends)
        self.refresh_s = refresh_s
        self.policies: dict[str, Policy] = {}
        self.keys_required = False
        self._registry: Any = None
        self._limiter: Any = None
        self._keys: dict[str, tuple[float, Any]] = {}
        self._task: asyncio.Task | None = None

    async def open(self) -> None:
        from vllm_fleet.registry import open_registry
        from vllm_fleet.registry.limits import Limiter

        self._registry = await open_registry(self.url)
        self._limiter = Limiter()
        await self.load()
        self._task = asyncio.get_running_loop().create_task(self._refresh())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._registry is not None:
            await self._registry.close()

    async def load(self) -> list[str]:
        """Read the registry now: its routes become the pool (beside the backends given) and the policies."""
        routes = await self._registry.routes()
        self.policies = {r.model: policy(r.policy) for r in routes}
        self.pool.set_backends([*self.static_backends, *(e for r in routes for e in r.endpoints)])
        self.keys_required = bool(await self._registry.keys())
        return sorted(self.policies)

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.load()
            except Exception as exc:  # a registry briefly away must not stop the router: keep the last view
                log.warning("registry refresh failed: %s", exc)

    async def admit(self, request: Request, facts: RequestFacts) -> Reply | None:
        """None when the request may go on; else its 401 or 429 answer."""
        if not self.keys_required:
            return None
        secret = _bearer(request) or (_offered_key(request) if request.upgrade else "")
        limits = await self._limits(secret) if secret else None
        if limits is None:
            how = f" or, from a browser's WebSocket, the subprotocol `{BROWSER_KEY}<key>`" if request.upgrade else ""
            return json_error(f"a valid API key is required: `Authorization: Bearer <key>`{how}", 401, "Unauthorized")
        wait = self._limiter.check(limits.name, limits, facts.tokens, time.monotonic())
        if wait is None:
            return None
        return json_error(
            f"API key {limits.name!r} is over its limit; retry in {wait:.0f} s",
            429,
            "RateLimitError",
            **{"Retry-After": str(max(1, round(wait)))},
        )

    async def _limits(self, secret: str) -> Any:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        limits = await self._registry.check_key(secret)
        if limits is not None and self.peers > 1:
            rpm, tpm = _share(limits.requests_per_min, self.peers), _share(limits.tokens_per_min, self.peers)
            limits = replace(limits, requests_per_min=rpm, tokens_per_min=tpm)
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[digest] = (now + KEY_CACHE_S, limits)
        return limits


def _bearer(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").strip().partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""  # RFC 9110: the scheme is case-insensitive


def _offered_key(request: Request) -> str:
    for item in request.headers.get("sec-websocket-protocol", "").split(","):
        if (item := item.strip()).startswith(BROWSER_KEY):
            return item[len(BROWSER_KEY) :]
    return ""


def _share(limit: int | None, peers: int) -> int | None:
    """One replica's share of a per-minute limit (at least 1: a limit never becomes a ban)."""
    return None if limit is None else max(1, math.ceil(limit / peers))
