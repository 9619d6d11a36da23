"""The router's HTTP server: its own paths, everything else proxied.

Own paths: ``/health`` (200 while a backend can take requests, else 503), ``/metrics``
(the router's), ``GET /v1/models`` (merged over the backends), ``/admin/...`` (admin.py), ``GET /`` (the
chat page, chat.py).
Every other path goes to a backend: POSTs with a JSON body are routed by their ``model``
(paths under /v1/ must name one), the rest to any available backend.

aiohttp's low-level server (no routing table, no middlewares: the least work per request),
with handler cancellation on, so a client that disconnects cancels its upstream request.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import aiohttp
from aiohttp import web

from vllm_fleet.router import admin, chat
from vllm_fleet.router.access import RegistryLink
from vllm_fleet.router.backends import Pool
from vllm_fleet.router.body import NO_FACTS, BodyError, read_facts
from vllm_fleet.router.config import RouterConfig
from vllm_fleet.router.metrics import RouterMetrics
from vllm_fleet.router.policies import Policy, policy
from vllm_fleet.router.proxy import Proxy, json_error, log_access

log = logging.getLogger("vllm_fleet.router")


class Router:
    """The pool, the policies and the proxy behind one listening socket."""

    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.metrics = RouterMetrics()
        self.pool = Pool(settings=config.pool, on_eject=lambda b: self.metrics.ejections.labels(b.url).inc())
        self.pool.set_backends(config.backends)
        self.default_policy: Policy = policy(config.policy)
        self.session: aiohttp.ClientSession | None = None  # the health checks' (requests go over wire.http1)
        self.proxy: Proxy | None = None
        self.registry = (
            RegistryLink(config.registry, self.pool, config.backends, config.registry_refresh_s)
            if config.registry
            else None
        )
        self.port = config.port
        self._runner: web.ServerRunner | None = None
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
        server = web.Server(self.handle, handler_cancellation=True, request_factory=self._request, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=self.config.shutdown_timeout_s)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port, backlog=4096, reuse_address=True)
        await site.start()
        if self.config.port == 0:
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        log.info("routing on http://%s:%d to %d backend(s)", self.config.host, self.port, len(self.pool.backends))

    def _request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        """aiohttp's request, with our body limit (the low-level server takes it no other way)."""
        loop = asyncio.get_running_loop()
        return web.BaseRequest(
            message, payload, protocol, writer, task, loop, client_max_size=self.config.max_body_bytes
        )

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
        if self._runner is not None:
            await self._runner.cleanup()
        await self.pool.stop()
        if self.session is not None:
            await self.session.close()
        if self.registry is not None:
            await self.registry.close()

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.perf_counter()
        path = request.path
        if path == "/health":
            ok = bool(self.pool.available(None))
            return web.Response(status=200 if ok else 503, text="" if ok else "no healthy backend")
        if path == "/metrics":
            return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")
        if path.startswith("/admin/"):
            return await admin.handle(request, self.pool, self.registry, self.config.admin_token)
        if path == "/v1/models" and request.method == "GET":
            cards = list(self.pool.models().values())
            return web.json_response({"object": "list", "data": cards})
        if chat.is_page(request):
            return chat.page(request)
        return await self._proxy(request, started)

    async def _proxy(self, request: web.BaseRequest, started: float) -> web.StreamResponse:
        assert self.proxy is not None
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            limit = self.config.max_body_bytes
            return _refused(
                request, None, started, f"the request body is larger than the router's limit of {limit} bytes", 413
            )
        facts = NO_FACTS
        openai = request.path.startswith("/v1/")
        if request.method == "POST" and (body or openai) and not _is_multipart(request):
            try:
                facts = read_facts(body)
            except BodyError as exc:
                return _refused(request, None, started, str(exc), 400)
            if facts.model is None and openai:
                why = "the request names no `model`; add one (GET /v1/models lists them)"
                return _refused(request, None, started, why, 400)
        choose = self.default_policy
        if self.registry is not None:
            refused = await self.registry.admit(request, facts)
            if refused is not None:
                log_access(request, refused.status, facts.model, "-", 0, started)
                return refused
            choose = self.registry.policies.get(facts.model or "", choose)
        return await self.proxy.forward(request, body, facts, choose, started)


def _refused(request: web.BaseRequest, model: str | None, started: float, why: str, status: int) -> web.Response:
    """An answer of the router's own (bad input), logged like every other."""
    log_access(request, status, model, "-", 0, started)
    return json_error(why, status)


def _is_multipart(request: web.BaseRequest) -> bool:
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
    try:
        if on_ready:
            on_ready(router)
        await stop.wait()
        log.info("stopping: %d request(s) in flight get up to %.0f s", router.metrics.in_flight._value.get(),
                 config.shutdown_timeout_s)  # fmt: skip
    finally:
        with suppress(Exception):
            await router.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
