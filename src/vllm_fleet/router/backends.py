"""The backend pool: which replicas may take a request now, and how loaded each is.

A backend takes new requests when its last health check passed, it is not ejected and
not draining. Health comes from two sides:

- active: GET /health (and /v1/models, for what it serves) every ``health_interval_s``;
  a refused connection takes it out at once, other failures after two checks in a row
  (a busy engine may answer one check late);
- passive: ``eject_after`` failed requests in a row eject it for a backoff that doubles
  on each ejection (1 s up to 30 s); the first success re-admits it.

Load is the router's own count of in-flight requests and tokens, plus what vLLM says:
the ``endpoint-load-metrics`` header on non-streamed answers, and a scrape of
``/metrics`` every ``scrape_interval_s`` (modest on purpose: scraping vLLM often slows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from vllm_fleet.wire import prometheus

log = logging.getLogger("vllm_fleet.router")

MAX_BACKOFF_S = 30.0


def hash64(text: str) -> int:
    """A stable 64-bit hash of ``text`` (the same in every process): backend seeds and prefix keys."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def backend_url(url: str) -> str:
    """``url`` as the pool keys it (no trailing slash); ValueError naming the fix when it is not a server's root."""
    given = url.strip()
    parts = urlsplit(given)
    try:
        port_ok = parts.port is None or parts.port > 0  # a port that is not a number raises
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok or parts.query or parts.fragment:
        root = given.split("//")[-1].split("/")[0] or "HOST:PORT"
        raise ValueError(f"{url!r} is not a backend URL: give a server's root, such as http://{root}")
    return given.rstrip("/")


@dataclass(eq=False, slots=True)
class Backend:
    """One replica as the router sees it."""

    url: str
    seed: int = 0  # rendezvous hashing identity, from the URL (the same in every router replica)
    healthy: bool = False  # no request before the first passed check
    draining: bool = False
    models: tuple[str, ...] = ()
    model_cards: tuple[dict[str, Any], ...] = ()
    in_flight: int = 0
    in_flight_tokens: int = 0
    failures: int = 0  # consecutive failed requests
    check_failures: int = 0  # consecutive failed health checks
    ejections: int = 0
    ejected_until: float = 0.0
    engine_waiting: float = 0.0
    engine_running: float = 0.0
    kv_cache_usage: float = 0.0
    served: int = 0
    last_error: str = ""
    client: Any = None  # the proxy's keep-alive connections to it (wire.http1.Client), made on first use

    def __post_init__(self) -> None:
        self.seed = hash64(self.url)

    def available(self, now: float) -> bool:
        return self.healthy and not self.draining and self.ejected_until <= now

    @property
    def load(self) -> float:
        """Least-load's measure: requests here now, ours and the engine's queue."""
        return self.in_flight + self.engine_waiting + self.kv_cache_usage

    def state(self, now: float) -> str:
        if self.draining:
            return "draining"
        if self.ejected_until > now:
            return "ejected"
        return "healthy" if self.healthy else "unhealthy"

    def to_dict(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "state": self.state(now),
            "models": list(self.models),
            "in_flight": self.in_flight,
            "in_flight_tokens": self.in_flight_tokens,
            "served": self.served,
            "failures": self.failures,
            "ejections": self.ejections,
            "ejected_for_s": round(max(0.0, self.ejected_until - now), 3),
            "engine_waiting": self.engine_waiting,
            "engine_running": self.engine_running,
            "kv_cache_usage": self.kv_cache_usage,
            "last_error": self.last_error,
        }


@dataclass
class PoolSettings:
    health_interval_s: float = 2.0
    health_timeout_s: float = 5.0
    scrape_interval_s: float = 5.0
    eject_after: int = 3


@dataclass
class Pool:
    """Every backend, and the ones that may take a request per model (cached until a state changes)."""

    settings: PoolSettings = field(default_factory=PoolSettings)
    backends: dict[str, Backend] = field(default_factory=dict)
    on_eject: Any = None  # callable(backend) for metrics
    pinned: set[str] = field(default_factory=set)  # added through the admin API: kept by set_backends
    _version: int = 0
    _cache: dict[str | None, tuple[int, float, list[Backend]]] = field(default_factory=dict)
    _tasks: set[asyncio.Task] = field(default_factory=set)
    _session: aiohttp.ClientSession | None = None

    # Membership.

    def set_backends(self, urls: Sequence[str]) -> None:
        """Make the pool exactly ``urls`` (and the backends added by hand, ``pin``): new ones are checked
        before they get requests; gone ones get no new requests (their in-flight ones finish)."""
        wanted = dict.fromkeys([*(u.rstrip("/") for u in urls), *self.pinned])
        for url in list(self.backends):
            if url not in wanted:
                self.remove(url)
        for url in wanted:
            self.add(url)

    def add(self, url: str, pin: bool = False) -> Backend:
        """Add ``url``; ``pin``: it stays when the registry or discovery next sets the pool (the admin API's)."""
        url = url.rstrip("/")
        if pin:
            self.pinned.add(url)
        if url not in self.backends:
            self.backends[url] = Backend(url)
            self.changed()
            if self._session is not None:
                self._spawn(self._check(self.backends[url]))
        return self.backends[url]

    def remove(self, url: str) -> bool:
        self.pinned.discard(url.rstrip("/"))
        backend = self.backends.pop(url.rstrip("/"), None)
        if backend is not None and backend.client is not None:
            backend.client.close_idle()  # the ones in use close when their answer is done
        self.changed()
        return backend is not None

    def drain(self, url: str, draining: bool = True) -> Backend | None:
        backend = self.backends.get(url.rstrip("/"))
        if backend is not None:
            backend.draining = draining
            self.changed()
        return backend

    def changed(self) -> None:
        self._version += 1

    # Choice.

    def available(self, model: str | None) -> list[Backend]:
        """Backends that may take a request for ``model`` now (None: any model)."""
        now = time.monotonic()
        cached = self._cache.get(model)
        if cached is not None and cached[0] == self._version and cached[1] > now:
            return cached[2]
        found = [b for b in self.backends.values() if b.available(now) and (model is None or model in b.models)]
        # An ejection ends by time, not by an event: the cache lives until the next one ends.
        until = min((b.ejected_until for b in self.backends.values() if b.ejected_until > now), default=now + 3600)
        if found or model is None:  # not a name nobody serves: a client's typos must not grow the cache
            self._cache[model] = (self._version, until, found)
        return found

    def models(self) -> dict[str, dict[str, Any]]:
        """Every model a healthy backend serves, with the card the first of them lists."""
        now = time.monotonic()
        cards: dict[str, dict[str, Any]] = {}
        for backend in self.backends.values():
            if backend.available(now):
                for card in backend.model_cards:
                    cards.setdefault(card["id"], card)
        return cards

    def retry_after_s(self) -> int:
        """When a backend may be back: the soonest ejection's end, or a health check's interval."""
        now = time.monotonic()
        ends = [b.ejected_until - now for b in self.backends.values() if b.ejected_until > now]
        return max(1, int(min(ends, default=self.settings.health_interval_s) + 0.999))

    # Outcomes of requests (passive health).

    def succeeded(self, backend: Backend) -> None:
        backend.served += 1
        if backend.failures:
            backend.failures = 0
            if backend.ejections:
                backend.ejections = 0
                self.changed()

    def failed(self, backend: Backend, why: str) -> None:
        backend.failures += 1
        backend.last_error = why
        if backend.failures >= self.settings.eject_after and backend.ejected_until <= time.monotonic():
            self.eject(backend, why)

    def eject(self, backend: Backend, why: str, for_s: float | None = None) -> None:
        backoff = for_s if for_s is not None else min(MAX_BACKOFF_S, 2.0**backend.ejections)
        backend.ejections += 1
        backend.ejected_until = time.monotonic() + backoff
        backend.last_error = why
        log.warning("ejected %s for %.0f s: %s", backend.url, backoff, why)
        if self.on_eject:
            self.on_eject(backend)
        self.changed()

    def load_header(self, backend: Backend, value: str) -> None:
        """vLLM's ``endpoint-load-metrics`` response header (ORCA, TEXT or JSON form)."""
        kind, _, rest = value.partition(" ")
        metrics: dict[str, float] = {}
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            if kind == "JSON":
                metrics = {k: float(v) for k, v in json.loads(rest).get("named_metrics", {}).items()}
            elif kind == "TEXT":
                for item in rest.split(","):
                    key, _, number = item.strip().partition("=")
                    metrics[key.removeprefix("named_metrics.")] = float(number)
        if "num_requests_waiting" in metrics:
            backend.engine_waiting = metrics["num_requests_waiting"]
        if "kv_cache_usage_perc" in metrics:
            backend.kv_cache_usage = metrics["kv_cache_usage_perc"]

    # Active checks.

    async def start(self, session: aiohttp.ClientSession) -> None:
        """Check every backend once (so the first requests have somewhere to go), then keep checking."""
        self._session = session
        await asyncio.gather(*(self._check(b) for b in list(self.backends.values())))
        self._spawn(self._every(self.settings.health_interval_s, self._check))
        self._spawn(self._every(self.settings.scrape_interval_s, self._scrape))

    async def stop(self) -> None:
        for backend in self.backends.values():
            if backend.client is not None:
                backend.client.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _every(self, interval_s: float, work: Any) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.gather(*(work(b) for b in list(self.backends.values())), return_exceptions=True)

    async def _check(self, backend: Backend) -> None:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=self.settings.health_timeout_s)
        try:
            async with self._session.get(f"{backend.url}/health", timeout=timeout) as resp:
                ok = resp.status == 200
                why = f"/health answered {resp.status}"
            if ok:
                async with self._session.get(f"{backend.url}/v1/models", timeout=timeout) as resp:
                    cards = tuple((await resp.json(content_type=None)).get("data", ()))
                self._set_models(backend, cards)
        except (aiohttp.ClientConnectorError, ConnectionRefusedError) as exc:
            return self._set_health(backend, False, f"refused: {exc.__class__.__name__}", at_once=True)
        except (TimeoutError, aiohttp.ClientError, ValueError, AttributeError) as exc:
            ok, why = False, f"health check failed: {exc.__class__.__name__} {exc}".strip()
        self._set_health(backend, ok, why)

    def _set_models(self, backend: Backend, cards: Iterable[dict[str, Any]]) -> None:
        cards = tuple(c for c in cards if isinstance(c, dict) and isinstance(c.get("id"), str))
        models = tuple(c["id"] for c in cards)
        backend.model_cards = cards
        if models != backend.models:
            backend.models = models
            self.changed()

    def _set_health(self, backend: Backend, ok: bool, why: str, at_once: bool = False) -> None:
        backend.check_failures = 0 if ok else backend.check_failures + 1
        healthy = ok or (backend.healthy and not at_once and backend.check_failures < 2)
        if not ok:
            backend.last_error = why
        if healthy != backend.healthy:
            level = logging.INFO if healthy else logging.WARNING
            log.log(
                level, "%s is now %s%s", backend.url, "healthy" if healthy else "unhealthy", "" if ok else f": {why}"
            )
            backend.healthy = healthy
            self.changed()

    async def _scrape(self, backend: Backend) -> None:
        assert self._session is not None
        if not backend.healthy:
            return
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.health_timeout_s)
            async with self._session.get(f"{backend.url}/metrics", timeout=timeout) as resp:
                text = await resp.text()
        except (TimeoutError, aiohttp.ClientError):
            return
        values = prometheus.parse_prometheus(text)
        backend.engine_waiting = values.get(prometheus.WAITING, 0.0)
        backend.engine_running = values.get(prometheus.RUNNING, 0.0)
        backend.kv_cache_usage = values.get(prometheus.KV_CACHE_USAGE, 0.0)
