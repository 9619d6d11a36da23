"""`bench` through the router loads the router and reads the engines' /metrics (the router has none of vLLM's)."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.router.harness import routing
from tests.servers.fake_engine import running
from vllm_fleet.bench import datasets, workers
from vllm_fleet.bench.loadgen import LoadConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_the_engines_queue_is_read_from_the_engines_not_the_router() -> None:
    counter = datasets.load_tokenizer(None)
    prompts = datasets.load_prompts("random", 24, counter, input_len=8, output_len=4)
    with running("--delay-ms", "300") as engine:

        async def body() -> tuple[dict, dict]:
            async with routing(engine.url) as router:
                config = LoadConfig(url=router.url, model="yardstick", num_prompts=24, max_concurrency=8,
                                    scrape_interval_s=0.1)  # fmt: skip
                through = await workers.run(config, prompts, counter)
                engines = await workers.run(
                    LoadConfig(**{**config.__dict__, "metrics_from": (engine.url,)}), prompts, counter
                )
                return through.server.summary(), engines.server.summary()

        router_only, from_engines = asyncio.run(body())
    assert router_only["server_mean_running"] is None  # the router's /metrics has no vllm:num_requests_running
    assert from_engines["server_mean_running"] and from_engines["server_mean_running"] > 0
