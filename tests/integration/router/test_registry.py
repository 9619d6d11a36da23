"""A router with a registry (SQLite and a real PostgreSQL): it routes the models registered there, by their
policy, and picks up registrations on reload and on its own refresh (issue 14)."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from tests.integration.router.harness import chat, client, error_of, post, routing, until
from tests.servers.faults import FaultServer
from vllm_fleet.registry import Deployment, open_registry

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
PATH = "/v1/chat/completions"


def test_routes_the_registered_models_and_picks_up_a_registration_on_reload(registry_url: str) -> None:
    with FaultServer(models=("chat",)) as a1, FaultServer(models=("chat",)) as a2, FaultServer(models=("emb",)) as b:

        async def body() -> None:
            async with await open_registry(registry_url) as registry:
                await registry.register(Deployment("chat-dep", "chat", (a1.url, a2.url), "round-robin"))
                async with routing(registry=registry_url, registry_refresh_s=3600) as router, client() as http:
                    seen = Counter()
                    for _ in range(6):
                        status, _, headers = await post(http, f"{router.url}{PATH}", chat("chat"))
                        assert status == 200
                        seen[headers["x-vllm-fleet-backend"]] += 1
                    assert seen == {a1.url: 3, a2.url: 3}  # the deployment's policy: round-robin

                    status, answer, _ = await post(http, f"{router.url}{PATH}", chat("emb"))
                    assert status == 404 and "chat" in error_of(answer)["message"]
                    await registry.register(Deployment("emb-dep", "emb", (b.url,), "least-load"))
                    async with http.post(f"{router.url}/admin/registry/reload") as resp:
                        assert resp.status == 200
                        assert await resp.json() == {"models": ["chat", "emb"], "backends": 3}
                    await until(lambda: router.pool.available("emb"), 5.0, "the new backend's first check")
                    status, _, headers = await post(http, f"{router.url}{PATH}", chat("emb"))
                    assert status == 200 and headers["x-vllm-fleet-backend"] == b.url
                    async with http.get(f"{router.url}/v1/models") as resp:
                        assert sorted(m["id"] for m in (await resp.json())["data"]) == ["chat", "emb"]

                    assert await registry.deregister("chat-dep")
                    async with http.post(f"{router.url}/admin/registry/reload") as resp:
                        assert (await resp.json())["models"] == ["emb"]
                    assert sorted(router.pool.backends) == [b.url]
                    status, answer, _ = await post(http, f"{router.url}{PATH}", chat("chat"))
                    assert status == 404 and error_of(answer)

        asyncio.run(body())
        assert len(b.requests(PATH)) == 1


def test_a_registration_is_picked_up_by_the_refresh_without_a_reload(registry_url: str) -> None:
    with FaultServer(models=("late",)) as late:

        async def body() -> None:
            async with (
                await open_registry(registry_url) as registry,
                routing(registry=registry_url, registry_refresh_s=0.1) as router,
                client() as http,
            ):
                assert router.pool.backends == {}
                await registry.register(Deployment("late-dep", "late", (late.url,)))
                await until(lambda: router.pool.available("late"), 10.0, "the refresh and the first check")
                assert (await post(http, f"{router.url}{PATH}", chat("late")))[0] == 200

        asyncio.run(body())


def test_a_backend_added_through_the_admin_api_outlives_the_registry_refresh(registry_url: str) -> None:
    with FaultServer(models=("reg",)) as registered, FaultServer(models=("hand",)) as by_hand:

        async def body() -> None:
            async with await open_registry(registry_url) as registry:
                await registry.register(Deployment("reg-dep", "reg", (registered.url,)))
                async with routing(registry=registry_url, registry_refresh_s=0.1) as router, client() as http:
                    async with http.post(f"{router.url}/admin/backends", json={"url": by_hand.url}) as resp:
                        assert resp.status == 200
                    await until(lambda: router.pool.available("hand"), 5.0, "the added backend's first check")
                    await asyncio.sleep(0.5)  # several refreshes: each sets the pool from the registry
                    assert sorted(router.pool.backends) == sorted([registered.url, by_hand.url])
                    assert (await post(http, f"{router.url}{PATH}", chat("hand")))[0] == 200

                    async with http.delete(f"{router.url}/admin/backends", json={"url": by_hand.url}) as resp:
                        assert await resp.json() == {"removed": True}
                    await asyncio.sleep(0.5)
                    assert sorted(router.pool.backends) == [registered.url]  # removed by hand: stays removed

        asyncio.run(body())
