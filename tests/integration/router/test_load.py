"""Least-load from what the engines say: the /metrics scrape and the endpoint-load-metrics header; and the
access log line per request (issue 14)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.integration.router.harness import QUIET, chat, client, post, routing, until
from tests.servers.fake_engine import metrics_text
from tests.servers.faults import Answer, FaultServer
from vllm_fleet.router.backends import PoolSettings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]
PATH = "/v1/chat/completions"


def test_least_load_avoids_the_engine_whose_scraped_queue_is_long() -> None:
    with FaultServer() as busy, FaultServer() as idle:
        busy.always("/metrics", Answer(200, metrics_text("m", running=8, waiting=12).encode(), ()))
        idle.always("/metrics", Answer(200, metrics_text("m", running=1, waiting=0).encode(), ()))
        scraping = PoolSettings(health_interval_s=60.0, health_timeout_s=1.0, scrape_interval_s=0.1)

        async def body() -> None:
            async with routing(busy.url, idle.url, policy="least-load", pool=scraping) as router, client() as http:
                await until(lambda: router.pool.backends[busy.url].engine_waiting == 12, 5.0, "a scrape")
                assert router.pool.backends[busy.url].engine_running == 8
                for _ in range(5):
                    assert (await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] == idle.url

        asyncio.run(body())
        assert busy.requests(PATH) == []


def test_the_load_header_is_asked_for_read_and_not_passed_to_the_client() -> None:
    with FaultServer() as first, FaultServer() as second:
        header = ("endpoint-load-metrics", "TEXT named_metrics.num_requests_waiting=9")
        first.script(PATH, Answer(200, b"{}", (("content-type", "application/json"), header)))

        async def body() -> None:
            async with routing(first.url, second.url, policy="least-load") as router, client() as http:
                status, _, headers = await post(http, f"{router.url}{PATH}", chat())
                assert status == 200 and headers["x-vllm-fleet-backend"] == first.url
                assert "endpoint-load-metrics" not in headers  # the router asked for it: it is the router's
                assert router.pool.backends[first.url].engine_waiting == 9
                for _ in range(3):  # now first looks busy: the rest go to second
                    assert (await post(http, f"{router.url}{PATH}", chat()))[2]["x-vllm-fleet-backend"] == second.url
                # A streamed request does not ask for it (vLLM sends it on whole answers only).
                await post(http, f"{router.url}{PATH}", chat(stream=True))

        asyncio.run(body())
        asked = [r.header("endpoint-load-metrics-format") for r in first.requests(PATH) + second.requests(PATH)]
        assert asked == ["TEXT", "TEXT", "TEXT", "TEXT", None]


def test_one_access_log_line_per_request(caplog: pytest.LogCaptureFixture) -> None:
    with FaultServer() as backend:

        async def body() -> None:
            async with routing(backend.url, pool=QUIET) as router, client() as http:
                await post(http, f"{router.url}{PATH}", chat())
                await post(http, f"{router.url}{PATH}", chat("unknown"))

        with caplog.at_level(logging.INFO, logger="vllm_fleet.router.access"):
            asyncio.run(body())
    lines = [r.getMessage() for r in caplog.records if r.name == "vllm_fleet.router.access"]
    # The proxied one names its backend; the router's own answer (the 404) has backend '-'.
    assert len(lines) == 2, lines
    assert f"POST {PATH}" in lines[0] and " 200 " in lines[0] and backend.url in lines[0], lines
    assert " 404 " in lines[1] and "backend=- attempts=0" in lines[1], lines
