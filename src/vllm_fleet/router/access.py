"""The registry as the router uses it: which models are routable and by what policy, and who may call.

Several router replicas may share one registry (PostgreSQL): each re-reads it every
``refresh_s``, so a deployment registered by `up` becomes routable everywhere within that.
The per-key limits are counted in each replica's memory, and every ``share_s`` the replicas
share what they charged each key through the registry (``Registry.share_spend``): each takes the
others' use from its own buckets, so a key's limits hold across the replicas however a Service
spreads its requests. Between two shares a key can pass its limit by what the other replicas
admitted meanwhile (a burst sent to N replicas in the same second: up to N times the burst).
An API key's limits are cached for ``KEY_CACHE_S``; the cache holds hashes, never a secret.

A key comes as ``Authorization: Bearer <key>``, or, on a WebSocket handshake, as the subprotocol
``openai-insecure-api-key.<key>``: a browser cannot set headers on a WebSocket, and this is the form
OpenAI's Realtime API takes from one. The offer goes on to the backend unchanged, as Authorization does.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from vllm_fleet.router.backends import Pool
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.router.policies import Policy, policy
from vllm_fleet.router.proxy import json_error
from vllm_fleet.wire.http1_server import Reply, Request

log = logging.getLogger("vllm_fleet.router")
KEY_CACHE_S = 30.0  # a deleted key stops working within this long on every router replica
FULL_REPORT_S = 240.0  # every key's total is reported this often (else the changed ones only): rows stay fresh
MAX_CACHED_KEYS = 10_000  # bounded: a flood of wrong keys cannot grow it
BROWSER_KEY = "openai-insecure-api-key."  # a Sec-WebSocket-Protocol item: the key follows


class RegistryLink:
    """The router's view of a registry: routes into the pool, policies per model, keys and limits."""

    def __init__(
        self, url: str, pool: Pool, static_backends: Sequence[str], refresh_s: float = 5.0, share_s: float = 1.0
    ) -> None:
        self.url = url
        self.pool = pool
        self.static_backends = tuple(static_backends)
        self.refresh_s = refresh_s
        self.share_s = share_s
        self.replica = uuid.uuid4().hex[:16]  # this router process, in the registry's spend table
        self.policies: dict[str, Policy] = {}
        self.keys_required = False
        self._registry: Any = None
        self._limiter: Any = None
        self._keys: dict[str, tuple[float, Any]] = {}
        self._named: dict[str, Any] = {}  # key name: its limits, for debiting the others' use
        self._seen: dict[tuple[str, str], tuple[float, float]] | None = None  # the others' totals at the last share
        self._reported_all = 0.0
        self._tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        from vllm_fleet.registry import open_registry
        from vllm_fleet.registry.limits import Limiter

        self._registry = await open_registry(self.url)
        self._limiter = Limiter()
        await self.load()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.refresh_s, self.load, "registry refresh")),
            loop.create_task(self._every(self.share_s, self.share, "sharing the keys' spend")),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._registry is not None:
            await self._registry.close()

    async def load(self) -> list[str]:
        """Read the registry now: its routes become the pool (beside the backends given) and the policies."""
        routes = await self._registry.routes()
        self.policies = {r.model: policy(r.policy) for r in routes}
        self.pool.set_backends([*self.static_backends, *(e for r in routes for e in r.endpoints)])
        keys = await self._registry.keys()
        self.keys_required = bool(keys)
        self._named = {k.name: k for k in keys}
        return sorted(self.policies)

    async def share(self) -> None:
        """Report what this replica charged each key; take what the others charged since the last share."""
        if not self.keys_required:
            return
        now = time.monotonic()
        everything = now - self._reported_all >= FULL_REPORT_S  # so a live replica's rows never look stale
        report = self._limiter.report(everything)
        try:
            others = await self._registry.share_spend(self.replica, report)
        except BaseException:
            self._limiter.unreported(report)
            raise
        if everything:
            self._reported_all = now
        seen, first = self._seen or {}, self._seen is None
        self._seen = {}
        for spend in others:
            pair = (spend.replica, spend.key_name)
            self._seen[pair] = (spend.requests, spend.tokens)
            limits = self._named.get(spend.key_name)
            if first or limits is None:  # at this replica's first share: what the others spent is the past
                continue
            # A pair not seen before is a replica's first use of the key since the last share: all of it is
            # new (or, rarely, a replica back after its rows went stale: the debit's floor bounds that).
            requests, tokens = seen.get(pair, (0.0, 0.0))
            self._limiter.debit(spend.key_name, limits, spend.requests - requests, spend.tokens - tokens, now)

    @staticmethod
    async def _every(seconds: float, work: Callable[[], Awaitable[object]], what: str) -> None:
        """``work`` every ``seconds``; a failure is logged once, not once a second, until it works again."""
        failing = False
        while True:
            await asyncio.sleep(seconds)
            try:
                await work()
            except Exception as exc:  # a registry briefly away must not stop the router: keep the last view
                if not failing:
                    log.warning("%s failed (said once until it works again): %s", what, exc)
                failing = True
            else:
                if failing:
                    log.warning("%s works again", what)
                failing = False

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
