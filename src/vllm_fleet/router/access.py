"""The registry as the router uses it: which models are routable and by what policy, and who may call.

Several router replicas may share one registry (PostgreSQL): each re-reads it every
``refresh_s``, so a deployment registered by `up` becomes routable everywhere within that.
A key's limits are token buckets in the registry, shared by the replicas; a replica spends from a
lease it took from them (``registry/limits.py``: about a second of the key's rate, so one registry
round trip a second per busy key, not one per request), and gives back what it did not spend once
the key goes quiet on it. A request is charged its estimated tokens up front and settled, once its
answer is over, to what the answer says it used (usage.py): the difference goes into or out of the
wallet, and a wallet's debt is paid into the key's buckets with its next lease. A realtime WebSocket
session is one request, and each of its turns is charged its usage as it passes: a turn that leaves the key
past its tokens/min ends the session (router/proxy.py), as a request past it would be refused. While the registry
cannot be reached, each replica limits keys on its own (as a lone router would: up to N times a key's
limits over N replicas) and says so once.
An API key's check is cached for ``refresh_s`` too, so a new key, a deleted one or its new limits reach
every replica within the one interval; the cache holds hashes, never a secret.

A key comes as ``Authorization: Bearer <key>``, or, on a WebSocket handshake, as the subprotocol
``openai-insecure-api-key.<key>``: a browser cannot set headers on a WebSocket, and this is the form
OpenAI's Realtime API takes from one. The offer goes on to the backend unchanged, as Authorization does.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vllm_fleet.errors import RegistryError
from vllm_fleet.registry.limits import IDLE_S, NOTHING, Allowance, Buckets, Wallet, limited
from vllm_fleet.registry.records import KeyLimits
from vllm_fleet.router.backends import Pool
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.router.metrics import RouterMetrics
from vllm_fleet.router.policies import Policy, policy
from vllm_fleet.router.proxy import json_error
from vllm_fleet.wire.http1_server import Reply, Request

log = logging.getLogger("vllm_fleet.router")
LEASE_TIMEOUT_S = 2.0  # a registry slower than this to lend is taken as away
AWAY_RETRY_S = 5.0  # while away, the registry is asked again this often (not by every request)
MAX_CACHED_KEYS = 10_000  # bounded: a flood of wrong keys cannot grow it
BROWSER_KEY = "openai-insecure-api-key."  # a Sec-WebSocket-Protocol item: the key follows


@dataclass(frozen=True, slots=True)
class Charge:
    """The tokens a request of an API key was charged up front: settled once it is answered."""

    limits: KeyLimits
    tokens: int


class RegistryLink:
    """The router's view of a registry: routes into the pool, policies per model, keys and limits."""

    def __init__(
        self, url: str, pool: Pool, metrics: RouterMetrics, static_backends: Sequence[str], refresh_s: float = 5.0
    ) -> None:
        self.url = url
        self.pool = pool
        self.metrics = metrics
        self.static_backends = tuple(static_backends)
        self.refresh_s = refresh_s
        self.policies: dict[str, Policy] = {}
        self.keys_required = False
        self._registry: Any = None
        self._keys: dict[str, tuple[float, Any]] = {}
        self._named: set[str] = set()  # the keys' names at the last load
        self._wallets: dict[str, Wallet] = {}  # key name: what this replica holds of its allowance
        self._leasing: dict[str, asyncio.Lock] = {}  # one lease in flight per key; its other requests wait for it
        self._local: dict[str, Buckets] = {}  # the keys' buckets while the registry is away
        self._away = False
        self._away_until = 0.0
        self._tasks: list[asyncio.Task] = []

    async def open(self) -> None:
        from vllm_fleet.registry import open_registry

        self._registry = await open_registry(self.url)
        await self.load()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.refresh_s, self.load, "registry refresh")),
            loop.create_task(self._every(IDLE_S, self.give_back, "giving unused key allowance back")),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._registry is not None:
            with contextlib.suppress(Exception):  # a registry away keeps what it lent: it refills anyway
                await asyncio.wait_for(self.give_back(idle_s=0.0), LEASE_TIMEOUT_S)
            await self._registry.close()

    async def load(self) -> list[str]:
        """Read the registry now: its routes become the pool (beside the backends given) and the policies."""
        routes = await self._registry.routes()
        self.policies = {r.model: policy(r.policy) for r in routes}
        self.pool.set_backends([*self.static_backends, *(e for r in routes for e in r.endpoints)])
        keys = await self._registry.keys()
        self.keys_required = bool(keys)
        self._named = {k.name for k in keys}
        return sorted(self.policies)

    async def give_back(self, idle_s: float = IDLE_S) -> None:
        """Give what the wallets unused for ``idle_s`` hold back to their keys' buckets, for the other replicas."""
        if self._away:
            return  # it was lent by this replica's own buckets, or will be spent here
        now = time.time()
        for name, wallet in list(self._wallets.items()):
            if now - wallet.used_at < idle_s or self._leasing[name].locked():
                continue
            held = wallet.empty()
            if name not in self._named:  # a key deleted (or not yet seen by load): nothing here to keep
                del self._wallets[name], self._leasing[name]
            if held:
                await self._registry.give_allowance(wallet.limits, held)

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

    async def admit(self, request: Request, facts: RequestFacts) -> Reply | Charge | None:
        """Its 401 or 429 answer; else None (no key needed) or the Charge of its key (the request may go on)."""
        if not self.keys_required:
            return None
        secret = _bearer(request) or (_offered_key(request) if request.upgrade else "")
        limits = await self._limits(secret) if secret else None
        if limits is None:
            how = f" or, from a browser's WebSocket, the subprotocol `{BROWSER_KEY}<key>`" if request.upgrade else ""
            return json_error(f"a valid API key is required: `Authorization: Bearer <key>`{how}", 401, "Unauthorized")
        wait = await self._allow(limits, facts.tokens) if limited(limits) else None
        if wait is None:
            return Charge(limits, facts.tokens)
        self.metrics.key_refused(limits.name)
        return json_error(
            _over(limits, wait),
            429,
            "RateLimitError",
            **{"Retry-After": str(max(1, round(wait)))},
        )

    def settle(self, charge: Charge, used: int | None) -> None:
        """The request used ``used`` tokens, not the estimate it was charged: this replica's wallet of its key
        gets the difference back, or owes it (the key's next lease pays the debt). None: the estimate stands."""
        self.metrics.key_used(charge.limits.name, charge.tokens if used is None else used)
        if used is not None:
            self._owe(charge.limits, used - charge.tokens)

    async def spend(self, limits: KeyLimits, tokens: int) -> str | None:
        """``tokens`` used by an admitted session beyond its charge (a WebSocket's turn), charged as they pass:
        when they leave the key past its tokens/min, why the session must end; else None."""
        self.metrics.key_used(limits.name, tokens, requests=0)
        if limits.tokens_per_min is None:  # counted only: nothing to charge it to
            return None
        self._owe(limits, tokens)
        async with self._leasing.setdefault(limits.name, asyncio.Lock()):
            wallet = self._wallets.get(limits.name)
            if wallet is None or wallet.limits != limits or wallet.tokens >= 0:
                return None  # this replica's share covers it (or the key is gone or made anew)
            want, _, owed = wallet.lease(0)  # the debt paid in; the key may go on if its bucket is not then empty
            lease, wait = await self._take(limits, want, NOTHING, owed)
            wallet.receive(lease)
            if not wait:
                return None
            wallet.refuse(wait, time.time())
            return _over(limits, wait)

    def _owe(self, limits: KeyLimits, tokens: int) -> None:
        wallet = self._wallets.get(limits.name)
        if limits.tokens_per_min is not None and wallet and wallet.limits == limits:
            wallet.tokens -= tokens  # (no wallet: the key was deleted or made anew with other limits)

    async def _allow(self, limits: KeyLimits, tokens: int) -> float | None:
        """None if the request may go on (charged to its key); else the seconds until it could."""
        async with self._leasing.setdefault(limits.name, asyncio.Lock()):  # the key's requests wait for its lease
            wallet, now = self._wallets.get(limits.name), time.time()
            if wallet is None or wallet.limits != limits:  # new here, or the key made anew with other limits
                wallet = self._wallets[limits.name] = Wallet(limits, used_at=now)
            if wallet.spend(tokens, now):
                return None
            if (wait := wallet.refused(now)) is not None:
                return wait
            want, need, owed = wallet.lease(tokens)
            lease, wait = await self._take(limits, want, need, owed)
            wallet.receive(lease)
            if wallet.spend(tokens, time.time()):
                return None
            wallet.refuse(wait, time.time())
            return wait

    async def _take(self, limits: KeyLimits, want: Allowance, need: Allowance, owed: float) -> tuple[Allowance, float]:
        """A lease from the key's buckets in the registry (``owed`` paid in first); from this replica's own while
        the registry is away."""
        now = time.time()
        if now >= self._away_until:
            try:
                lease = await asyncio.wait_for(self._registry.take_allowance(limits, want, need, owed), LEASE_TIMEOUT_S)
            except (RegistryError, TimeoutError, OSError) as exc:
                if not self._away:
                    log.warning("the registry lent no key allowance (%s): this replica limits keys on its own"
                                " until it does (said once)", exc or exc.__class__.__name__)  # fmt: skip
                self._away, self._away_until = True, now + AWAY_RETRY_S
            else:
                if self._away:
                    log.warning("the registry lends key allowance again: the replicas share the keys' limits")
                self._away, self._local = False, {}
                return lease
        buckets = self._local.setdefault(limits.name, Buckets.full(limits, now))
        return buckets.take(limits, want, need, now, owed)

    async def _limits(self, secret: str) -> Any:
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        limits = await self._registry.check_key(secret)
        if len(self._keys) >= MAX_CACHED_KEYS:
            self._keys.clear()
        self._keys[digest] = (now + self.refresh_s, limits)
        return limits


def _over(limits: KeyLimits, wait: float) -> str:
    return f"API key {limits.name!r} is over its limit; retry in {max(1, round(wait))} s"


def _bearer(request: Request) -> str:
    scheme, _, secret = request.headers.get("authorization", "").strip().partition(" ")
    return secret.strip() if scheme.lower() == "bearer" else ""  # RFC 9110: the scheme is case-insensitive


def _offered_key(request: Request) -> str:
    for item in request.headers.get("sec-websocket-protocol", "").split(","):
        if (item := item.strip()).startswith(BROWSER_KEY):
            return item[len(BROWSER_KEY) :]
    return ""
