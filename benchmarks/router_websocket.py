"""bench_router.py section 7: WebSockets (vLLM's /v1/realtime) through each proxy, against the origin called directly.

Origin: tests/servers/realtime.py (uvicorn + FastAPI with ``ws="auto"``, vLLM's own server stack), an echo,
pinned with the client. In front of it, on the proxy core: ours, nginx (configured for WebSockets as its
docs say) and vllm-router (tried: a refused handshake is reported, not measured). The client is aiohttp's.

- round trip: one WebSocket, a 64 B binary message sent and its echo awaited, closed loop,
  ``--ws-messages`` per round; p50/p99 per round and added = through - direct (medians over rounds,
  rounds interleaving the targets as the other sections do);
- the same through ours with an API key: its sessions are metered (each message the origin sends followed
  and searched for a usage: what that costs);
- throughput: 16 WebSockets at once, each echoing 16 KiB messages closed loop, 16,000 echoes a round
  (long enough for a CPU figure: /proc counts it in 10 ms ticks); MiB/s wall (both ways) and
  messages forwarded (both ways) per proxy CPU-second.

Every echo is compared with what was sent: a wrong byte counts as a failure.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import router_load as load

PATH = "/v1/realtime?model=m"
WARMUP = 50  # echoes before the clock starts: the connection and both ends' buffers settle
SOCKETS, BIG, ECHOES = 16, 16 * 1024, 16_000


class Refused(Exception):
    """The proxy did not upgrade: its answer to the handshake."""


async def _connect(http: aiohttp.ClientSession, url: str, api_key: str | None) -> aiohttp.ClientWebSocketResponse:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        ws = await http.ws_connect(f"{url}{PATH}", max_msg_size=0, headers=headers)
    except aiohttp.WSServerHandshakeError as exc:
        raise Refused(f"HTTP {exc.status} to the handshake") from exc
    await ws.receive_json()  # the origin's session.created
    return ws


async def _echo(ws: aiohttp.ClientWebSocketResponse, data: bytes) -> None:
    await ws.send_bytes(data)
    if await ws.receive_bytes() != data:
        raise AssertionError("the echo differs from what was sent")


async def _round_trips(url: str, count: int, api_key: str | None) -> list[float]:
    data = os.urandom(64)
    async with aiohttp.ClientSession() as http:
        ws = await _connect(http, url, api_key)
        for _ in range(WARMUP):
            await _echo(ws, data)
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            await _echo(ws, data)
            samples.append((time.perf_counter() - start) * 1000)
        await ws.close()
    return sorted(samples)


async def _throughput(url: str, per_socket: int, api_key: str | None) -> float:
    """Seconds for SOCKETS WebSockets to echo ``per_socket`` messages of BIG bytes each, all at once."""
    data = os.urandom(BIG)
    async with aiohttp.ClientSession() as http:
        sockets = await asyncio.gather(*(_connect(http, url, api_key) for _ in range(SOCKETS)))
        await asyncio.gather(*(_echo(ws, data) for ws in sockets))
        start = time.perf_counter()

        async def one(ws: aiohttp.ClientWebSocketResponse) -> None:
            for _ in range(per_socket):
                await _echo(ws, data)

        await asyncio.gather(*(one(ws) for ws in sockets))
        took = time.perf_counter() - start
        await asyncio.gather(*(ws.close() for ws in sockets))
    return took


def run(targets: list[Any], rounds: int, messages: int, quiet: Callable[[], object]) -> dict:
    """``targets``: bench_router's Targets, the origin first. Each one's figures, or why it was not measured."""
    p50: dict[str, list[float]] = {t.key: [] for t in targets}
    p99: dict[str, list[float]] = {t.key: [] for t in targets}
    per_cpu: dict[str, list[float]] = {t.key: [] for t in targets}
    wall: dict[str, list[float]] = {t.key: [] for t in targets}
    refused: dict[str, str] = {}
    per_socket = ECHOES // SOCKETS
    for round_ in range(rounds):
        for target in targets:
            if target.key in refused:
                continue
            quiet()
            try:
                samples = asyncio.run(_round_trips(target.url, messages, target.api_key))
                before = target.cpu()
                took = asyncio.run(_throughput(target.url, per_socket, target.api_key))
                used = target.cpu() - before
            except (Refused, aiohttp.ClientError, AssertionError) as exc:
                refused[target.key] = str(exc) or type(exc).__name__
                print(f"  websocket {target.key:<24} not measured: {refused[target.key]}", file=sys.stderr, flush=True)
                continue
            forwarded = 2 * SOCKETS * (per_socket + 1)  # both ways, the warm-up echo included (its CPU is)
            p50[target.key].append(load.pct(samples, 50))
            p99[target.key].append(load.pct(samples, 99))
            wall[target.key].append(2 * SOCKETS * per_socket * BIG / took / (1 << 20))
            if target.proc:
                per_cpu[target.key].append(forwarded / used if used > 0 else float("inf"))
            key = target.key
            figures = f"p50 {p50[key][-1]:.3f} p99 {p99[key][-1]:.3f} ms; {wall[key][-1]:,.0f} MiB/s"
            print(f"  websocket round {round_ + 1}/{rounds} {key:<24} round trip {figures}", file=sys.stderr)
    direct = targets[0].key
    result: dict[str, dict] = {}
    for target in targets:
        key = target.key
        if key in refused:
            result[key] = {"not_measured": refused[key]}
            continue
        row = {"p50_ms": statistics.median(p50[key]), "p99_ms": statistics.median(p99[key]),
               "mib_per_s_wall": statistics.median(wall[key])}  # fmt: skip
        if target.proc and direct not in refused:
            row["added_p50_ms"] = statistics.median(a - b for a, b in zip(p50[key], p50[direct], strict=True))
            row["added_p99_ms"] = statistics.median(a - b for a, b in zip(p99[key], p99[direct], strict=True))
            row["messages_per_cpu_s"] = statistics.median(per_cpu[key])
        result[key] = row
    return result
