"""Bad input gets an OpenAI-style error with the right status, and never hurts the router: a good request
succeeds after each (issue 14)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.integration.router.harness import chat, client, error_of, make_key, post, routing
from tests.servers.fake_engine import running
from tests.servers.faults import Answer, FaultServer
from vllm_fleet.router.server import Router

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


@pytest.mark.parametrize(
    ("sent", "status", "says"),
    [
        (b"{not json", 400, "not JSON"),
        (b"\xff\xfe", 400, "not JSON"),
        (b"", 400, "not JSON"),
        (b'["a list"]', 400, "JSON object"),
        (b'{"model": 7}', 400, "`model`"),
        (b'{"messages": []}', 400, "no `model`"),
        (b'{"model": "gpt-9", "messages": []}', 404, "yardstick"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),  # a JSON bomb: past both parsers' depth
    ],
    ids=["not-json", "not-utf8", "empty", "a-list", "model-not-a-string", "no-model", "unknown-model", "deep"],
)
def test_a_bad_body_is_refused_and_the_router_goes_on(sent: bytes, status: int, says: str) -> None:
    with running() as engine:

        async def body() -> None:
            async with routing(engine.url) as router, client() as http:
                answered, answer, headers = await post(http, f"{router.url}{PATH}", sent)
                assert answered == status and headers["content-type"].startswith("application/json")
                assert says in error_of(answer)["message"], answer
                assert error_of(answer)["code"] == status
                assert (await post(http, f"{router.url}{PATH}", chat("yardstick")))[0] == 200

        asyncio.run(body())


def test_an_oversize_body_is_a_413() -> None:
    with FaultServer() as backend:

        async def body() -> None:
            async with routing(backend.url, max_body_bytes=1024) as router, client() as http:
                big = chat(content="x" * 4096)
                status, answer, _ = await post(http, f"{router.url}{PATH}", big)
                assert status == 413 and "1024" in error_of(answer)["message"]
                assert (await post(http, f"{router.url}{PATH}", chat(content="x" * 512)))[0] == 200

        asyncio.run(body())
    assert len(backend.requests(PATH)) == 1


def test_no_healthy_backend_is_a_503_with_retry_after() -> None:
    with FaultServer() as backend:
        backend.always("/health", Answer(503, b""))

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                status, answer, headers = await post(http, f"{router.url}{PATH}", chat())
                assert status == 503 and int(headers["retry-after"]) >= 1 and error_of(answer)
                backend.always("/health", None)
                await router.pool._check(router.pool.backends[backend.url])  # the next check, now
                assert (await post(http, f"{router.url}{PATH}", chat()))[0] == 200

        asyncio.run(body())


def test_api_keys_from_the_registry_401_when_wrong_and_429_over_the_limit(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-a", requests_per_min=2)
    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with routing(backend.url, registry=url) as router, client() as http:
                for auth in (None, "Bearer wrong", "Bearer "):  # none, a wrong one, an empty one
                    headers = {"content-type": "application/json"} | ({"authorization": auth} if auth else {})
                    status, answer, _ = await post(http, f"{router.url}{PATH}", chat(), headers=headers)
                    assert status == 401 and "API key" in error_of(answer)["message"], auth
                good = {"content-type": "application/json", "authorization": f"Bearer {secret}"}
                for _ in range(2):
                    assert (await post(http, f"{router.url}{PATH}", chat(), headers=good))[0] == 200
                status, answer, headers = await post(http, f"{router.url}{PATH}", chat(), headers=good)
                assert status == 429 and int(headers["retry-after"]) >= 1 and "team-a" in error_of(answer)["message"]
                # Refused requests never reach a backend; the limit is per key.
                assert len(backend.requests(PATH)) == 2

        asyncio.run(body())
    assert all(json.loads(r.body)["model"] == "m" for r in backend.requests(PATH))


def test_router_replicas_on_one_registry_hold_a_keys_limit_together(tmp_path: Path) -> None:
    """Two routers on one registry, a client on each: a key's use on one counts on the other (not 1/N each,
    which a Service balancing connections, not requests, would break)."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-b", requests_per_min=5)
    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with (
                routing(backend.url, registry=url, key_share_s=0.05) as one,
                routing(backend.url, registry=url, key_share_s=0.05) as two,
                client() as http,
            ):
                good = {"content-type": "application/json", "authorization": f"Bearer {secret}"}

                async def statuses(router: Router, n: int) -> list[int]:
                    return [(await post(http, f"{router.url}{PATH}", chat(), headers=good))[0] for _ in range(n)]

                assert await statuses(one, 3) == [200, 200, 200]
                await asyncio.sleep(0.5)  # several shares: two has taken one's 3
                assert await statuses(two, 3) == [200, 200, 429]
                await asyncio.sleep(0.5)
                assert await statuses(one, 1) == [429]  # and one, two's 2
            assert len(backend.requests(PATH)) == 5

        asyncio.run(body())
