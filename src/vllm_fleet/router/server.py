"""The router's HTTP server: its own paths, everything else proxied.

Own paths: ``/health`` (200 while a backend can take requests, else 503), ``/metrics``
(the router's), ``GET /v1/models`` (merged over the backends), ``/admin/...`` (admin.py), ``GET /`` (the
chat page, chat.py).
Every other path goes to a backend: POSTs with a JSON body are routed by their ``model``
(paths under /v1/ must name one), a WebSocket by its ``?model=``, the rest to any available backend.

The server is the project's own HTTP/1.1 protocol (wire/http1_server.py: the least work per request and
per streamed event); a client that disconnects cancels its handler and so its upstream request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import replace
from functools import partial
from urllib.parse import parse_qs

import aiohttp

from vllm_fleet.router import admin, chat
from vllm_fleet.router.access import RegistryLink
from vllm_fleet.router.backends import Pool
from vllm_fleet.router.body import NO_FACTS, BodyError, read_facts
from vllm_fleet.router.config import RouterConfig
from vllm_fleet.router.metrics import RouterMetrics
from vllm_fleet.router.policies import Policy, policy
from vllm_fleet.router.proxy import Proxy, json_error, log_access
from vllm_fleet.router.usage import Meter
from vllm_fleet.wire.http1_server import Reply, Request, Server

log = logging.getLogger("vllm_fleet.router")


class Router:
    """The pool, the policies and the proxy behind one listening socket."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.pool = Pool(settings=config.pool, on_eject=lambda b: self.metrics.ejections.labels(b.url).inc())
        self.pool.set_backends(config.backends)
        self.metrics.in_flight.set_function(self.in_flight)
        self.default_policy: Policy = policy(config.policy)
        self.session: aiohttp.ClientSession | None = None  # the health checks' (requests go over wire.http1)
        self.proxy: Proxy | None = None
        self.registry = (
            RegistryLink(config.registry, self.pool, self.metrics, config.backends, config.registry_refresh_s)
            if config.registry
            else None
        )
        self.port = config.port
        self._server: Server | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Connect to the backends (one health check each) and listen."""
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
        self.session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s),
        )
        self.proxy = Proxy(self.pool, self.metrics, self.config.retries, self.config.connect_timeout_s)
        if self.registry is not None:
            await self.registry.open()
        if self.config.discover:
            self._tasks.append(asyncio.get_running_loop().create_task(self._discover(self.config.discover)))
        await self.pool.start(self.session)
        self._server = Server(
            self.handle,
            max_body_bytes=self.config.max_body_bytes,
            request_timeout_s=self.config.request_timeout_s,
            max_head_bytes=self.config.max_head_bytes,
        )
        await self._server.start(self.config.host, self.config.port)
        self.port = self._server.port
        log.info("routing on http://%s:%d to %d backend(s)", self.config.host, self.port, len(self.pool.backends))

    async def _discover(self, where: str) -> None:
        """Follow a Kubernetes Service's ready endpoints: NAMESPACE/SERVICE:PORT."""
        from vllm_fleet.router.discovery import follow_endpointslices

        namespace, _, rest = where.partition("/")
        service, _, port = rest.partition(":")
        await follow_endpointslices(namespace, service, int(port or 8000), self.pool.set_backends)

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to the shutdown timeout), close."""
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            await self._server.close(self.config.shutdown_timeout_s)
        await self.pool.stop()
        if self.session is not None:
            await self.session.close()
        if self.registry is not None:
            await self.registry.close()

    def in_flight(self) -> int:
        return sum(b.in_flight for b in self.pool.backends.values())

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def handle(self, request: Request) -> Reply | None:
        started = time.perf_counter()
        path = request.path
        if request.oversize:
            limit = self.config.max_body_bytes
            why = f"the request body is larger than the router's limit of {limit} bytes"
            return _refused(request, None, started, why, 413)
        if path == "/health":
            ok = bool(self.pool.available(None))
            return Reply(200 if ok else 503, _TEXT, b"" if ok else b"no healthy backend")
        if path == "/metrics":
            return Reply(200, _TEXT, self.metrics.exposition())
        if path.startswith("/admin/"):
            return await admin.handle(request, self.pool, self.registry, self.config.admin_token)
        if path == "/v1/models" and request.method == "GET":
            return Reply.json({"object": "list", "data": list(self.pool.models().values())})
        if chat.is_page(request):
            return chat.page(request)
        return await self._proxy(request, started)

    async def _proxy(self, request: Request, started: float) -> Reply | None:
        assert self.proxy is not None
        body = request.body
        facts = NO_FACTS
        openai = request.path.startswith("/v1/")
        if request.upgrade:  # a WebSocket names its model in the query, as OpenAI's Realtime API does
            facts = replace(NO_FACTS, model=parse_qs(request.query).get("model", [None])[0])
        elif request.method == "POST" and (body or openai) and not _is_multipart(request):
            try:
                facts = read_facts(body)
            except BodyError as exc:
                return _refused(request, None, started, str(exc), 400)
            if facts.model is None and openai:
                why = "the request names no `model`; add one (GET /v1/models lists them)"
                return _refused(request, None, started, why, 400)
        choose, charge, registry = self.default_policy, None, self.registry
        if registry is not None:
            admitted = await registry.admit(request, facts)
            if isinstance(admitted, Reply):
                log_access(request, admitted.status, facts.model, "-", 0, started)
                return admitted
            charge = admitted
            choose = registry.policies.get(facts.model or "", choose)
        if request.upgrade:
            if charge is None or registry is None:
                return await self.proxy.tunnel(request, facts, choose, started)
            registry.settle(charge, None)  # admitted; each turn's tokens are charged as its usage passes
            return await self.proxy.tunnel(request, facts, choose, started, partial(registry.spend, charge.limits))
        if charge is None or registry is None:
            return await self.proxy.forward(request, facts, choose, started)
        meter = Meter()
        try:
            return await self.proxy.forward(request, facts, choose, started, meter)
        finally:  # a client gone mid-answer too: it is charged what it was sent
            registry.settle(charge, meter.used(facts.prompt_tokens))


_TEXT = [("Content-Type", "text/plain; charset=utf-8")]


def _refused(request: Request, model: str | None, started: float, why: str, status: int) -> Reply:
    """An answer of the router's own (bad input), logged like every other."""
    log_access(request, status, model, "-", 0, started)
    return json_error(why, status)


def _is_multipart(request: Request) -> bool:
    """Uploads (audio transcriptions) carry form fields, not JSON: routed without reading them."""
    return request.headers.get("content-type", "").startswith("multipart/")


async def serve(config: RouterConfig, on_ready: Callable[[Router], None] | None = None) -> None:
    """Run a router until SIGTERM or SIGINT, then shut it down gracefully."""
    router = Router(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await router.start()
    # What start-up made (modules, the loop, the pool) is never garbage: out of the collector's sight, each
    # collection walks only what requests allocate, and an occasional full one no longer stalls a request.
    gc.collect()
    gc.freeze()
    try:
        if on_ready:
            on_ready(router)
        await stop.wait()
        log.info("stopping: %d request(s) in flight get up to %.0f s", router.in_flight(),
                 config.shutdown_timeout_s)  # fmt: skip
    finally:
        with suppress(Exception):
            await router.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
