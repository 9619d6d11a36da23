"""Failures: retries before the first byte and never after, Retry-After honoured, passive ejection with
re-admission, active health checks (503 and a hung /health) (issue 14). Requests are counted at the
backends, so a request sent twice cannot pass unseen."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import pytest

from tests.integration.router.harness import QUIET, chat, client, error_of, metric, post, routing, until
from tests.servers.faults import Answer, FaultServer, Hang, Reset
from vllm_fleet.router.backends import PoolSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


async def send(http: aiohttp.ClientSession, router_url: str, **extra: Any) -> tuple[int, Any, Any]:
    return await post(http, f"{router_url}{PATH}", chat(**extra))


def test_a_refused_connection_is_retried_on_another_backend() -> None:
    with FaultServer() as first, FaultServer() as second:

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                first.refuse()  # healthy when checked, refusing now
                status, _, headers = await send(http, router.url)
                assert status == 200 and headers["x-vllm-fleet-backend"] == second.url
                async with http.get(f"{router.url}/metrics") as resp:
                    assert metric(await resp.text(), "vllm_fleet_router_retries_total", reason="connect") == 1

        asyncio.run(body())
        assert len(second.requests(PATH)) == 1


def test_a_reset_before_the_answer_is_retried_on_another_backend() -> None:
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, Reset(head=False))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                status, _, headers = await send(http, router.url)
                assert status == 200 and headers["x-vllm-fleet-backend"] == second.url

        asyncio.run(body())
        assert (len(first.requests(PATH)), len(second.requests(PATH))) == (1, 1)


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_5xx_gateway_answer_is_retried_on_another_backend(status: int) -> None:
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, Answer(status, b'{"error":"busy"}'))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                answered, _, headers = await send(http, router.url)
                assert answered == 200 and headers["x-vllm-fleet-backend"] == second.url
                async with http.get(f"{router.url}/metrics") as resp:
                    assert metric(await resp.text(), "vllm_fleet_router_retries_total", reason=str(status)) == 1

        asyncio.run(body())
        assert (len(first.requests(PATH)), len(second.requests(PATH))) == (1, 1)


def test_a_500_is_not_retried() -> None:
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, Answer(500, b'{"error":"bug"}'))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                assert (await send(http, router.url))[0] == 500

        asyncio.run(body())
        assert (len(first.requests(PATH)), len(second.requests(PATH))) == (1, 0)


def test_a_429_with_retry_after_goes_to_another_and_keeps_that_backend_out_that_long() -> None:
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, Answer(429, b"{}", (("retry-after", "2"),)))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                status, _, headers = await send(http, router.url)
                assert status == 200 and headers["x-vllm-fleet-backend"] == second.url
                kept_out = time.monotonic()
                async with http.get(f"{router.url}/admin/backends") as resp:
                    states = {b["url"]: b for b in (await resp.json())["backends"]}
                assert states[first.url]["state"] == "ejected" and 1.0 < states[first.url]["ejected_for_s"] <= 2.0
                for _ in range(6):  # round-robin would alternate; the 429'd one is out
                    assert (await send(http, router.url))[2]["x-vllm-fleet-backend"] == second.url
                if time.monotonic() - kept_out < 1.5:
                    assert len(first.requests(PATH)) == 1
                await until(lambda: router.pool.backends[first.url].available(time.monotonic()), 5.0, "its return")
                backends = {(await send(http, router.url))[2]["x-vllm-fleet-backend"] for _ in range(4)}
                assert backends == {first.url, second.url}

        asyncio.run(body())


def test_never_a_retry_once_bytes_reached_the_client(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="vllm_fleet")
    with FaultServer() as first, FaultServer() as second:
        first.script(PATH, Reset(partial=b'{"id":"f","choices":[{"mess'))

        async def body() -> None:
            async with routing(first.url, second.url, policy="round-robin") as router, client() as http:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with http.post(f"{router.url}{PATH}", json=chat()) as resp:
                        assert resp.status == 200  # the head went out: the only honest end now is a broken body
                        await resp.read()
                await until(lambda: router.pool.backends[first.url].in_flight == 0, 5.0, "in_flight 0")
                assert router.pool.backends[first.url].failures == 1
                assert (await send(http, router.url))[0] == 200  # and the router goes on

        asyncio.run(body())
        # the backend's failure is in the access log, and is no error of the router's
        assert any("aborted mid-answer" in r.getMessage() for r in caplog.records)
        assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(first.requests(PATH)) == 1
        assert len(second.requests(PATH)) == 1  # only the later request: the broken one was not sent again


def test_the_retry_budget_bounds_the_attempts_and_the_last_answer_is_passed_on() -> None:
    with FaultServer() as a, FaultServer() as b, FaultServer() as c:
        for backend in (a, b, c):
            backend.always(PATH, Answer(503, b'{"error":"overloaded"}'))

        async def body() -> None:
            async with routing(a.url, b.url, c.url, policy="round-robin", retries=1) as router, client() as http:
                status, answer, _ = await send(http, router.url)
                assert (status, answer) == (503, {"error": "overloaded"})

        asyncio.run(body())
        assert sum(len(s.requests(PATH)) for s in (a, b, c)) == 2


def test_every_backend_refusing_is_a_502_with_retry_after() -> None:
    with FaultServer() as first, FaultServer() as second:

        async def body() -> None:
            async with routing(first.url, second.url) as router, client() as http:
                first.refuse()
                second.refuse()
                status, answer, headers = await send(http, router.url)
                assert status == 502 and int(headers["retry-after"]) >= 1
                assert first.url in error_of(answer)["message"] and second.url in error_of(answer)["message"]

        asyncio.run(body())


def test_consecutive_failures_eject_a_backend_and_it_is_readmitted_after_the_backoff() -> None:
    with FaultServer() as backend:
        backend.always(PATH, Answer(500, b"{}"))

        async def body() -> None:
            async with routing(backend.url) as router, client() as http:
                for _ in range(QUIET.eject_after):
                    assert (await send(http, router.url))[0] == 500
                status, answer, headers = await send(http, router.url)
                assert status == 503 and int(headers["retry-after"]) >= 1 and error_of(answer)
                assert len(backend.requests(PATH)) == QUIET.eject_after  # ejected: not sent
                async with http.get(f"{router.url}/metrics") as resp:
                    assert metric(await resp.text(), "vllm_fleet_router_ejections_total", backend=backend.url) == 1
                backend.always(PATH, None)  # it recovers
                await until(lambda: router.pool.backends[backend.url].available(time.monotonic()), 5.0, "re-admission")
                assert (await send(http, router.url))[0] == 200
                assert router.pool.backends[backend.url].failures == 0

        asyncio.run(body())


FAST_CHECKS = PoolSettings(health_interval_s=0.1, health_timeout_s=0.3, scrape_interval_s=60.0)


@pytest.mark.parametrize("fault", ["503", "hang"])
def test_a_backend_whose_health_fails_gets_no_new_requests(fault: str) -> None:
    with FaultServer() as sick, FaultServer() as well:

        async def body() -> None:
            async with routing(sick.url, well.url, policy="round-robin", pool=FAST_CHECKS) as router, client() as http:
                backends = {(await send(http, router.url))[2]["x-vllm-fleet-backend"] for _ in range(2)}
                assert backends == {sick.url, well.url}
                sick.always("/health", Answer(503, b"") if fault == "503" else Hang())
                if fault == "hang":
                    sick.always(PATH, Hang())
                await until(lambda: not router.pool.backends[sick.url].healthy, 10.0, "the check to fail")
                before = len(sick.requests(PATH))
                for _ in range(6):
                    assert (await send(http, router.url))[2]["x-vllm-fleet-backend"] == well.url
                assert len(sick.requests(PATH)) == before
                sick.always("/health", None)
                await until(lambda: router.pool.backends[sick.url].healthy, 10.0, "the check to pass again")

        asyncio.run(body())
