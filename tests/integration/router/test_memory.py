"""Memory: many requests leave nothing per request behind in the pool, the metrics or the heap (issue 14)."""

from __future__ import annotations

import asyncio
import gc
import json
import random

import aiohttp
import pytest

from tests.integration.router.harness import metric, routing
from tests.servers.fake_engine import running
from vllm_fleet.router.body import RequestFacts
from vllm_fleet.wire import http1
from vllm_fleet.wire.http1_server import Reply, Request

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
REQUESTS = 20_000
CONCURRENCY = 32


def alive(*types: type) -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, types))


def test_twenty_thousand_requests_leave_no_per_request_state() -> None:
    with running() as one, running() as two:

        async def body() -> None:
            async with routing(one.url, two.url) as router, aiohttp.ClientSession() as http:
                rng = random.Random(7)
                url = f"{router.url}/v1/chat/completions"

                async def worker(count: int) -> None:
                    for _ in range(count):
                        n = rng.randrange(1 << 30)
                        kind = n % 10
                        if kind == 0:  # a model nobody serves: a 404 whose name must not be kept
                            request = {"model": f"typo-{n}", "messages": [{"role": "user", "content": "x"}]}
                            expected = 404
                        else:
                            request = {
                                "model": "yardstick",
                                "messages": [
                                    {"role": "system", "content": f"system {n % 97}"},
                                    {"role": "user", "content": f"question {n}"},
                                ],
                                "max_tokens": 2,
                                "user": f"user-{n}",
                                "stream": kind == 1,
                            }
                            expected = 200
                        headers = {"content-type": "application/json", "x-session-id": f"s-{n}"}
                        async with http.post(url, data=json.dumps(request), headers=headers) as resp:
                            await resp.read()
                            assert resp.status == expected, await resp.text()

                per_request = (RequestFacts, Request, Reply, aiohttp.ClientResponse)
                first = REQUESTS // CONCURRENCY // 4
                await asyncio.gather(*(worker(first) for _ in range(CONCURRENCY)))
                early = alive(*per_request)
                await asyncio.gather(*(worker(REQUESTS // CONCURRENCY - first) for _ in range(CONCURRENCY)))
                late = alive(*per_request)
                # What is left is per keep-alive connection (the test's aiohttp client keeps a connection's last
                # response), never per request: bounded by the connections and no more after 4x the requests.
                assert late <= early + 2 and late <= 2 * CONCURRENCY + 8, (early, late)
                # An upstream connection keeps its last response until its next one: per connection, not request.
                upstream = sum(len(b.client._open) for b in router.pool.backends.values() if b.client)
                assert alive(http1.Response) <= upstream, upstream

                for backend in router.pool.backends.values():
                    assert (backend.in_flight, backend.in_flight_tokens) == (0, 0), backend
                    assert backend.failures == 0 and backend.ejections == 0
                assert len(router.pool._cache) <= 2  # one entry per model asked for (and None), never per request
                assert len(router.pool._tasks) == 2  # the health and scrape loops
                async with http.get(f"{router.url}/metrics") as resp:
                    text = await resp.text()
                assert metric(text, "vllm_fleet_router_in_flight") == 0
                labelled = [line for line in text.splitlines() if line.startswith("vllm_fleet_router_requests_total{")]
                assert len(labelled) <= 4, labelled  # model x backend x status: bounded, whatever the clients send
                served = sum(b.served for b in router.pool.backends.values())
                assert served == REQUESTS // CONCURRENCY * CONCURRENCY - metric(
                    text, "vllm_fleet_router_requests_total", model="", backend="", status="404"
                )

        asyncio.run(body())
