"""A key's tokens/min counts what real vLLM says its answers used, not the router's estimate (issue 14).

A router with a registry and a key of 60 tokens a minute in front of the served replica: a one-token
chat is charged about 2 tokens up front, but vLLM's usage counts the chat template too (tens of
tokens), so the key's third request within the minute is refused; charged its estimate only, each
would have passed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Served
from tests.integration.router.harness import client, make_key, post, routing

pytestmark = pytest.mark.e2e


def test_a_keys_tokens_are_settled_to_vllms_usage(served: Served, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "e2e", tokens_per_min=60)
    headers = {"content-type": "application/json", "authorization": f"Bearer {secret}"}
    ask = {"model": served.model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 1}

    async def body() -> tuple[int, list[int]]:
        async with routing(served.url, registry=url) as router, client() as http:
            status, answer, _ = await post(http, f"{router.url}/v1/chat/completions", ask, headers=headers)
            assert status == 200, answer
            streamed = ask | {"stream": True, "stream_options": {"include_usage": True}}
            second, events, _ = await post(http, f"{router.url}/v1/chat/completions", streamed, headers=headers)
            usage = [json.loads(e[6:])["usage"] for e in events.decode().split("\n\n") if '"usage":{' in e]
            assert second == 200 and usage[-1]["total_tokens"] == answer["usage"]["total_tokens"]
            third = await post(http, f"{router.url}/v1/chat/completions", ask, headers=headers)
            return answer["usage"]["total_tokens"], [status, second, third[0]]

    used, statuses = asyncio.run(body())
    assert used >= 31  # the template's tokens: two such requests owe more than the minute's 60
    assert statuses == [200, 200, 429]
