"""`vllm-fleet drain`: wait until a vLLM server has no running or waiting request.

Runs as the engine container's preStop hook. Kubernetes removes a terminating
pod from the Service's endpoints at the same moment, so no new request should
arrive; we first wait ``settle_s`` for load balancers that lag behind, then
poll ``/metrics`` until vllm:num_requests_running + vllm:num_requests_waiting
is 0 or the timeout passes. vLLM then gets SIGTERM.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import httpx

from vllm_fleet.wire.prometheus import in_flight


@dataclass(frozen=True)
class DrainResult:
    """How the drain ended: drained (nothing in flight, or the server is gone) or timed out."""

    drained: bool
    seconds: float
    in_flight: float | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


async def drain(url: str, *, timeout_s: float, poll_s: float = 1.0, settle_s: float = 5.0) -> DrainResult:
    """Poll ``url``/metrics until nothing is in flight or ``timeout_s`` passes (never raises)."""
    start = time.monotonic()
    await asyncio.sleep(min(settle_s, timeout_s))
    last: float | None = None
    async with httpx.AsyncClient(timeout=min(5.0, max(poll_s, 0.5)), trust_env=False) as client:
        while True:
            try:
                response = await client.get(f"{url.rstrip('/')}/metrics")
                response.raise_for_status()
                last = in_flight(response.text)
            except httpx.HTTPError as exc:
                return DrainResult(True, time.monotonic() - start, last, f"server not answering ({type(exc).__name__})")
            elapsed = time.monotonic() - start
            if last == 0:
                return DrainResult(True, elapsed, 0.0, "no request running or waiting")
            if elapsed >= timeout_s:
                return DrainResult(False, elapsed, last, f"timed out with {last:g} request(s) in flight")
            await asyncio.sleep(poll_s)
