"""Is a server up? vLLM has no /ready: ready means ``/health`` answers 200 and the model is listed."""

from __future__ import annotations

import httpx

HEALTH_PATH = "/health"


async def is_healthy(client: httpx.AsyncClient, root: str, timeout_s: float = 2.0) -> bool:
    """True when ``root``/health answers 200; a refused or slow connection is False, never an error."""
    try:
        return (await client.get(f"{root}{HEALTH_PATH}", timeout=timeout_s)).status_code == 200
    except httpx.HTTPError:
        return False
