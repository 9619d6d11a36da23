"""The router in-process on a free port, in the test's own event loop (tests run ``asyncio.run`` themselves).

Helpers shared by the router's integration tests; the fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp

from vllm_fleet.registry import open_registry
from vllm_fleet.router.backends import PoolSettings
from vllm_fleet.router.config import RouterConfig
from vllm_fleet.router.server import Router

# Health checks far apart unless a test wants them: a test decides what the router has seen.
QUIET = PoolSettings(health_interval_s=60.0, health_timeout_s=1.0, scrape_interval_s=60.0, eject_after=3)


@contextlib.asynccontextmanager
async def routing(*backends: str, pool: PoolSettings = QUIET, **config: Any) -> AsyncIterator[Router]:
    """A started router on 127.0.0.1:<free port> in front of ``backends``; stopped on exit."""
    config.setdefault("shutdown_timeout_s", 2.0)
    router = Router(RouterConfig(backends=backends, port=0, pool=pool, **config))
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


def make_key(url: str, name: str, **limits: int) -> str:
    """A new API key in the registry at ``url``; its secret."""

    async def create() -> str:
        async with await open_registry(url) as registry:
            return await registry.create_key(name, **limits)

    return asyncio.run(create())


@contextlib.asynccontextmanager
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def chat(model: str = "m", content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4, **extra}


async def post(session: aiohttp.ClientSession, url: str, body: Any, **kw: Any) -> tuple[int, Any, Any]:
    """(status, parsed JSON or raw bytes, headers) of one POST."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kw.setdefault("headers", {"content-type": "application/json"})
    async with session.post(url, data=data, **kw) as resp:
        raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw
        return resp.status, parsed, resp.headers


async def until(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` on the loop until true; fail after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


async def until_async(predicate: Callable[[], Awaitable[object]], timeout_s: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of ``name`` with exactly ``labels`` in a Prometheus exposition (0 if absent)."""
    for line in text.splitlines():
        match = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if not match or match[1] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match[2] or ""))
        if found == labels:
            return float(match[3])
    return 0.0


def error_of(body: Any) -> dict[str, Any]:
    """The OpenAI-style error object, asserting the shape."""
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error["message"], str) and error["message"] and "type" in error and "code" in error, error
    return error
