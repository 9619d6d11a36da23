"""The admin API: drain (no new requests, in-flight ones finish, in_flight reported until 0), add and
remove backends, the admin token (issue 14)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.router.harness import chat, client, error_of, post, routing, until
from tests.servers.faults import Answer, FaultServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


async def backends(http: aiohttp.ClientSession, url: str, **kw: Any) -> dict[str, dict[str, Any]]:
    async with http.get(f"{url}/admin/backends", **kw) as resp:
        assert resp.status == 200
        return {b["url"]: b for b in (await resp.json())["backends"]}


async def admin(http: aiohttp.ClientSession, method: str, url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kw) as resp:
        return resp.status, await resp.json()


def test_drain_takes_no_new_requests_lets_in_flight_finish_and_reports_in_flight_until_0() -> None:
    with FaultServer() as slow, FaultServer() as other:
        slow.script(PATH, Answer(delay_s=1.0))

        async def body() -> None:
            async with routing(slow.url, other.url, policy="round-robin") as router, client() as http:
                in_flight = asyncio.ensure_future(post(http, f"{router.url}{PATH}", chat()))
                await until(lambda: slow.requests(PATH), 5.0, "the slow request to arrive")
                status, state = await admin(http, "POST", f"{router.url}/admin/backends/drain", {"url": slow.url})
                assert status == 200 and state["state"] == "draining" and state["in_flight"] == 1
                for _ in range(4):
                    assert (await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] == other.url
                assert (await backends(http, router.url))[slow.url]["in_flight"] == 1
                status, _, headers = await in_flight
                assert status == 200 and headers["x-vllm-fleet-backend"] == slow.url  # it finished there
                listed = (await backends(http, router.url))[slow.url]
                assert listed["state"] == "draining" and listed["in_flight"] == 0
                undrain = {"url": slow.url, "draining": False}
                status, state = await admin(http, "POST", f"{router.url}/admin/backends/drain", undrain)
                assert status == 200 and state["state"] == "healthy"
                seen = {(await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] for _ in range(2)}
                assert seen == {slow.url, other.url}

        asyncio.run(body())
        assert len(slow.requests(PATH)) == 2


def test_backends_are_added_and_removed_through_the_admin_api() -> None:
    with FaultServer() as first, FaultServer() as second:

        async def body() -> None:
            async with routing(first.url, policy="round-robin") as router, client() as http:
                status, state = await admin(http, "POST", f"{router.url}/admin/backends", {"url": second.url + "/"})
                assert status == 200 and state["url"] == second.url
                await until(lambda: router.pool.backends[second.url].healthy, 5.0, "its first check")
                seen = {(await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] for _ in range(4)}
                assert seen == {first.url, second.url}
                status, answer = await admin(http, "DELETE", f"{router.url}/admin/backends", {"url": first.url})
                assert (status, answer) == (200, {"removed": True})
                assert list(await backends(http, router.url)) == [second.url]
                before = len(first.requests(PATH))
                for _ in range(4):
                    assert (await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] == second.url
                assert len(first.requests(PATH)) == before
                status, answer = await admin(http, "DELETE", f"{router.url}/admin/backends", {"url": first.url})
                assert (status, answer) == (200, {"removed": False})

        asyncio.run(body())


def test_admin_mistakes_get_openai_style_errors() -> None:
    with FaultServer() as backend:

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                drain = f"{router.url}/admin/backends/drain"
                status, answer = await admin(http, "POST", drain, {"url": "http://127.0.0.1:1"})
                assert status == 404 and "GET /admin/backends" in error_of(answer)["message"]
                status, answer = await admin(http, "POST", drain, {"no": "url"})
                assert status == 400 and error_of(answer)
                async with http.post(drain, data=b"{not json") as resp:
                    assert resp.status == 400 and error_of(await resp.json())
                status, answer = await admin(http, "POST", f"{router.url}/admin/backends", {"url": "127.0.0.1:9"})
                assert status == 400 and "such as http://127.0.0.1:9" in error_of(answer)["message"]
                assert list(router.pool.backends) == [backend.url]  # nothing added
                status, answer = await admin(http, "GET", f"{router.url}/admin/nothing", None)
                assert status == 404 and error_of(answer)
                status, answer = await admin(http, "POST", f"{router.url}/admin/registry/reload", None)
                assert status == 409 and "--registry" in error_of(answer)["message"]
                assert (await post(http, f"{router.url}{PATH}", chat()))[0] == 200

        asyncio.run(body())


def test_the_admin_token_is_required_when_set() -> None:
    with FaultServer() as backend:

        async def body() -> None:
            async with routing(backend.url, admin_token="s3cret") as router, client() as http:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                    async with http.get(f"{router.url}/admin/backends", headers=headers) as resp:
                        assert resp.status == 401 and error_of(await resp.json())
                    status, _ = await admin(
                        http, "POST", f"{router.url}/admin/backends/drain", {"url": backend.url}, headers=headers
                    )
                    assert status == 401
                assert not router.pool.backends[backend.url].draining
                good = {"Authorization": "Bearer s3cret"}
                assert list(await backends(http, router.url, headers=good)) == [backend.url]
                # The token guards the admin API only: requests need none.
                assert (await post(http, f"{router.url}{PATH}", chat()))[0] == 200
                assert router.pool.backends[backend.url].available(time.monotonic())

        asyncio.run(body())
