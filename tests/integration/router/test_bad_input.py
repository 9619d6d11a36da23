"""Bad input gets an OpenAI-style error with the right status, and never hurts the router: a good request
succeeds after each (issue 14)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.router.harness import chat, client, error_of, make_key, metric, post, routing
from tests.servers.fake_engine import running
from tests.servers.faults import Answer, FaultServer, Stream
from vllm_fleet.registry import open_registry
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


def test_a_new_key_and_a_deleted_one_reach_the_router_within_its_registry_refresh(tmp_path: Path) -> None:
    """The first key made while the router runs turns keys on; a key deleted is refused, though the router had
    checked (and cached) it moments before: each within one registry refresh."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with routing(backend.url, registry=url, registry_refresh_s=0.2) as router, client() as http:
                assert (await post(http, f"{router.url}{PATH}", chat()))[0] == 200  # no key yet: none needed
                async with await open_registry(url) as registry:
                    await registry.create_key("team-b")
                    secret = await registry.create_key("team-c")
                await asyncio.sleep(0.5)
                assert (await post(http, f"{router.url}{PATH}", chat()))[0] == 401
                assert await statuses(http, router, secret, 1) == [200]
                async with await open_registry(url) as registry:
                    assert await registry.delete_key("team-c")
                await asyncio.sleep(0.5)
                status, answer, _ = await post(http, f"{router.url}{PATH}", chat(), headers=bearer(secret))
                assert status == 401 and "API key" in error_of(answer)["message"]

        asyncio.run(body())


def bearer(secret: str) -> dict[str, str]:
    return {"content-type": "application/json", "authorization": f"Bearer {secret}"}


def test_router_replicas_on_one_registry_hold_a_keys_limit_together(tmp_path: Path) -> None:
    """Two routers on one registry, a client on each: a key's use on one counts on the other at once, and a
    client on one replica has the key's whole allowance (not 1/N of it, which a Service balancing
    connections, not requests, would break)."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-b", requests_per_min=5)
    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with (
                routing(backend.url, registry=url) as one,
                routing(backend.url, registry=url) as two,
                client() as http,
            ):
                assert await statuses(http, one, secret, 3) == [200, 200, 200]
                assert await statuses(http, two, secret, 3) == [200, 200, 429]
                assert await statuses(http, one, secret, 1) == [429]
            assert len(backend.requests(PATH)) == 5

        asyncio.run(body())


def test_a_burst_sent_to_every_router_replica_at_once_gets_the_keys_limit_and_no_more(registry_url: str) -> None:
    """Three routers, each sent 12 requests at once on a key of 12 a minute: 12 pass in all, not 12 each."""
    secret = make_key(registry_url, "burst", requests_per_min=12)
    with FaultServer(models=("m",)) as backend:

        async def body() -> list[int]:
            async with (
                routing(backend.url, registry=registry_url) as one,
                routing(backend.url, registry=registry_url) as two,
                routing(backend.url, registry=registry_url) as three,
                client() as http,
            ):
                sent = [statuses(http, router, secret, 1) for router in (one, two, three) for _ in range(12)]
                return [status for answers in await asyncio.gather(*sent) for status in answers]

        answered = asyncio.run(body())
    assert sorted(answered) == [200] * 12 + [429] * 24
    assert len(backend.requests(PATH)) == 12


def test_a_registry_that_lends_no_allowance_leaves_each_replica_limiting_keys_on_its_own(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The keys' buckets gone from the registry (a registry failing mid-way): requests are still served, each
    replica counts the key alone, and the router says so once."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-c", requests_per_min=2)
    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with routing(backend.url, registry=url) as router, client() as http:
                with sqlite3.connect(tmp_path / "registry.sqlite") as raw:
                    raw.execute("DROP TABLE key_buckets")
                with caplog.at_level(logging.WARNING, "vllm_fleet.router"):
                    assert await statuses(http, router, secret, 3) == [200, 200, 429]
                said = [r.getMessage() for r in caplog.records if "lent no key allowance" in r.getMessage()]
                assert len(said) == 1 and "key_buckets" in said[0]

        asyncio.run(body())


def test_each_keys_requests_and_tokens_are_in_the_metrics(tmp_path: Path) -> None:
    """Per key: requests admitted and refused, and the tokens its answers used (a key without limits too)."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    limited, free = make_key(url, "team-g", tokens_per_min=1000), make_key(url, "team-h")
    with FaultServer(models=("m",)) as backend:
        backend.always(PATH, Answer(body=b'{"choices":[],"usage":{"prompt_tokens":1,"total_tokens":700}}'))

        async def body() -> str:
            async with routing(backend.url, registry=url) as router, client() as http:
                assert await statuses(http, router, limited, 3, max_tokens=None) == [200, 200, 429]
                assert await statuses(http, router, free, 4) == [200] * 4
                async with http.get(f"{router.url}/metrics") as resp:
                    return await resp.text()

        text = asyncio.run(body())
    counts = {
        (key, outcome): metric(text, "vllm_fleet_router_key_requests_total", key=key, outcome=outcome)
        for key in ("team-g", "team-h")
        for outcome in ("admitted", "refused")
    }
    assert counts == {("team-g", "admitted"): 2, ("team-g", "refused"): 1, ("team-h", "admitted"): 4,
                      ("team-h", "refused"): 0}  # fmt: skip
    assert metric(text, "vllm_fleet_router_key_tokens_total", key="team-g") == 1400
    assert metric(text, "vllm_fleet_router_key_tokens_total", key="team-h") == 2800


async def statuses(http: aiohttp.ClientSession, router: Router, secret: str, n: int, **body: Any) -> list[int]:
    """``n`` chat requests to ``router`` with the API key ``secret``, one after another: their statuses."""
    return [(await post(http, f"{router.url}{PATH}", chat(**body), headers=bearer(secret)))[0] for _ in range(n)]


CONTENT = b'{"choices":[{"delta":{"content":"w"}}]}'
USED_700 = b'{"choices":[],"usage":{"prompt_tokens":1,"total_tokens":700,"completion_tokens":699}}'


@pytest.mark.parametrize(
    ("answer", "max_tokens", "expected"),
    [
        (Answer(body=b'{"choices":[],"usage":{"prompt_tokens":1,"total_tokens":700}}'), None, [200, 200, 429]),
        (Stream((CONTENT, USED_700, b"[DONE]")), None, [200, 200, 429]),  # stream_options.include_usage
        (Stream((CONTENT,) * 699), None, [200, 200, 429]),  # no usage event: its 699 events, and the prompt
        (Answer(body=b'{"choices":[],"usage":{"prompt_tokens":1,"total_tokens":10}}'), 400, [200] * 6),
    ],
    ids=["answer-used-more", "stream-usage-event", "stream-events", "answer-used-less"],
)
def test_a_keys_tokens_are_settled_to_what_its_answers_used(
    tmp_path: Path, answer: Answer | Stream, max_tokens: int | None, expected: list[int]
) -> None:
    """Charged up front its estimate (1 token of prompt, plus max_tokens), a request is settled to what its
    answer says it used: 700 tokens a request, a key of 1,000 a minute has two (the estimate alone let
    every one through), and a request that used 10 of its 400 leaves 390 for the next ones (two would pass)."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-f", tokens_per_min=1000)
    with FaultServer(models=("m",)) as backend:
        backend.always(PATH, answer)

        async def body() -> None:
            async with routing(backend.url, registry=url) as router, client() as http:
                extra = {"max_tokens": max_tokens, "stream": isinstance(answer, Stream)}
                assert await statuses(http, router, secret, len(expected), **extra) == expected
                if expected[-1] == 429:  # the debt is in the wait: 684 tokens needed, 283 left, 1,000 a minute
                    good = {"content-type": "application/json", "authorization": f"Bearer {secret}"}
                    _, _, headers = await post(http, f"{router.url}{PATH}", chat(), headers=good)
                    assert int(headers["retry-after"]) >= 20

        asyncio.run(body())


def test_what_a_replica_leased_and_did_not_spend_goes_back_when_the_key_is_quiet_and_at_stop(tmp_path: Path) -> None:
    """A lease is a second of the key's rate ahead: unspent, it goes back to the key's buckets for the others."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-d", requests_per_min=600)  # 10 a second: each lease holds 10 ahead
    levels: list[tuple[float, float]] = []

    def level() -> None:
        with sqlite3.connect(tmp_path / "registry.sqlite") as raw:
            levels.append(raw.execute("SELECT requests, stamp FROM key_buckets").fetchone())

    with FaultServer(models=("m",)) as backend:

        async def body() -> None:
            async with (
                client() as http,
                routing(backend.url, registry=url) as one,
                routing(backend.url, registry=url) as two,
            ):
                await statuses(http, one, secret, 1)
                await statuses(http, two, secret, 1)
                level()
                assert one.registry is not None
                await one.registry.give_back(idle_s=0.0)  # as after IDLE_S without a request for the key
                level()
            level()

        asyncio.run(body())
    (leased, at), (given, given_at), (stopped, stopped_at) = levels
    assert leased == pytest.approx(600 - 22, abs=0.5)  # two leases of 1 + 10 (less a few ms of refill)
    assert given == pytest.approx(leased + (given_at - at) * 10 + 10)  # one's 10 back
    assert stopped == pytest.approx(given + (stopped_at - given_at) * 10 + 10)  # two's 10, as it stopped


def test_a_client_past_its_limit_does_not_make_each_request_a_registry_write(tmp_path: Path) -> None:
    """Refused once, the key's requests are refused here without asking the registry again for up to a second."""
    url = f"sqlite:///{tmp_path / 'registry.sqlite'}"
    secret = make_key(url, "team-e", requests_per_min=2)

    def stamp() -> float:
        with sqlite3.connect(tmp_path / "registry.sqlite") as raw:
            return raw.execute("SELECT stamp FROM key_buckets").fetchone()[0]

    with FaultServer(models=("m",)) as backend:

        async def body() -> tuple[float, float]:
            async with routing(backend.url, registry=url) as router, client() as http:
                assert await statuses(http, router, secret, 3) == [200, 200, 429]
                first = stamp()
                assert set(await statuses(http, router, secret, 30)) == {429}
                return first, stamp()

        first, last = asyncio.run(body())
    assert last == first  # no take since the first refusal
