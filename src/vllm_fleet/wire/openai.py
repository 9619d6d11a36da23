"""The OpenAI-compatible HTTP API as vLLM serves it: where an endpoint's root is, and request bodies.

A user may hand us the server root (``http://host:8000``) or the ``base_url`` an OpenAI
client takes (``http://host:8000/v1``); every command accepts both and talks to the root.
"""

from __future__ import annotations

import json
from typing import Any

API_PREFIX = "/v1"


def server_root(url: str) -> str:
    """``url`` without a trailing slash or ``/v1``: where /health, /metrics and /v1/... live."""
    url = url.rstrip("/")
    return url.removesuffix(API_PREFIX) if url.endswith(API_PREFIX) else url


def chat_body(model: str, content: str, *, max_tokens: int, stream: bool = False) -> dict[str, Any]:
    """A deterministic one-message chat completion request; a stream asks for usage in its last event."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def served_models(listing: dict[str, Any]) -> list[str]:
    """Model ids of a ``GET /v1/models`` response."""
    return [m["id"] for m in listing["data"]]


def error_body(message: str, status: int, kind: str = "invalid_request_error") -> bytes:
    """An OpenAI-style error response body (the shape vLLM's server and OpenAI's clients use)."""
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()


def realtime_error(message: str, code: str) -> str:
    """An error event of a realtime session, as vLLM's realtime endpoint sends one (its ``ErrorEvent``)."""
    return json.dumps({"type": "error", "error": message, "code": code})
