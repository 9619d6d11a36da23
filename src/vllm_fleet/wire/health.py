"""Is a server up? vLLM has no /ready: ready means ``/health`` answers 200 and the model is listed."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import httpx

from vllm_fleet.errors import CheckFailed

HEALTH_PATH = "/health"


async def is_healthy(client: httpx.AsyncClient, root: str, timeout_s: float = 2.0) -> bool:
    """True when ``root``/health answers 200; a refused or slow connection is False, never an error."""
    try:
        return (await client.get(f"{root}{HEALTH_PATH}", timeout=timeout_s)).status_code == 200
    except httpx.HTTPError:
        return False


async def ensure_listening(root: str, timeout_s: float = 1.0) -> None:
    """Raise CheckFailed at once when nothing accepts a connection at ``root`` (instead of a run of 0 ms failures)."""
    parts = urlsplit(root)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
    except (OSError, TimeoutError) as exc:
        raise CheckFailed(
            f"nothing listening at {root} ({type(exc).__name__})",
            fix="start the server (vllm-fleet up SPEC) or check the URL",
        ) from exc
    writer.close()
    await writer.wait_closed()
