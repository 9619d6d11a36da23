"""The registry's contract, written once and run against SQLite and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from vllm_fleet.errors import RegistryError, SpecError
from vllm_fleet.registry import Deployment, KeyLimits, Registry, Route, open_registry
from vllm_fleet.registry.limits import Allowance
from vllm_fleet.registry.migrations import LATEST

pytestmark = pytest.mark.integration
T = TypeVar("T")


def using(url: str, body: Callable[[Registry], Awaitable[T]]) -> T:
    async def main() -> T:
        async with await open_registry(url) as registry:
            return await body(registry)

    return asyncio.run(main())


def test_open_migrates_and_migrating_again_is_a_no_op(registry_url: str) -> None:
    async def body(registry: Registry) -> tuple[int, list[int], list[int]]:
        return await registry.schema_version(), await registry.migrate(), await registry.migrate()

    assert using(registry_url, body) == (LATEST, [], [])


def test_concurrent_migrations_apply_each_step_once(registry_url: str) -> None:
    async def main() -> list[list[int]]:
        registries = [await open_registry(registry_url, migrate=False) for _ in range(4)]
        try:
            return list(await asyncio.gather(*(r.migrate() for r in registries)))
        finally:
            for registry in registries:
                await registry.close()

    applied = asyncio.run(main())
    assert sorted(applied, key=len) == [[], [], [], list(range(1, LATEST + 1))]
    assert using(registry_url, lambda r: r.schema_version()) == LATEST


def test_register_routes_and_deregister(registry_url: str) -> None:
    async def body(registry: Registry) -> None:
        await registry.register(Deployment("chat-a", "smollm2", ("http://a:1", "http://a:2"), "prefix"))
        await registry.register(Deployment("other", "qwen", ("http://q:1",), "round-robin"))
        await registry.register(Deployment("chat-b", "smollm2", ("http://b:1", "http://a:2"), "least-load"))
        assert await registry.routes() == [
            Route("qwen", "round-robin", ("http://q:1",), ("other",)),
            Route("smollm2", "least-load", ("http://a:1", "http://a:2", "http://b:1"), ("chat-a", "chat-b")),
        ]
        # Registering chat-a again (a re-run `up`) replaces its endpoints and makes its policy the latest.
        await registry.register(Deployment("chat-a", "smollm2", ("http://a:3",), "session"))
        smollm2 = [r for r in await registry.routes() if r.model == "smollm2"]
        assert smollm2 == [
            Route("smollm2", "session", ("http://b:1", "http://a:2", "http://a:3"), ("chat-b", "chat-a"))
        ]
        assert await registry.deregister("chat-b") is True
        assert await registry.deregister("chat-b") is False
        assert [d.name for d in await registry.deployments()] == ["other", "chat-a"]
        assert await registry.deregister("other") and await registry.deregister("chat-a")
        assert await registry.routes() == []

    using(registry_url, body)


def test_registrations_persist_across_connections(registry_url: str) -> None:
    deployment = Deployment("chat", "smollm2", ("http://127.0.0.1:8001",))
    using(registry_url, lambda r: r.register(deployment))
    assert using(registry_url, lambda r: r.deployments()) == [deployment]


def test_api_keys(registry_url: str) -> None:
    async def body(registry: Registry) -> None:
        alice = await registry.create_key("alice", requests_per_min=60, tokens_per_min=10_000)
        bob = await registry.create_key("bob")
        assert alice.startswith("vf-") and alice != bob and len(alice) > 30
        assert await registry.check_key(alice) == KeyLimits("alice", 60, 10_000)
        assert await registry.check_key(bob) == KeyLimits("bob", None, None)
        assert await registry.check_key(alice + "x") is None
        assert await registry.check_key("") is None
        assert await registry.keys() == [KeyLimits("alice", 60, 10_000), KeyLimits("bob")]
        with pytest.raises(RegistryError, match="already exists"):
            await registry.create_key("alice")
        assert await registry.delete_key("alice") is True
        assert await registry.delete_key("alice") is False
        assert await registry.check_key(alice) is None
        assert await registry.keys() == [KeyLimits("bob")]

    using(registry_url, body)


def test_bad_key_input_is_refused_before_anything_is_written(registry_url: str) -> None:
    async def body(registry: Registry) -> list[KeyLimits]:
        for name, rpm in (("", None), ("has space", None), ("ok", 0)):
            with pytest.raises(SpecError):
                await registry.create_key(name, requests_per_min=rpm)
        return await registry.keys()

    assert using(registry_url, body) == []


def test_a_write_that_fails_half_way_is_rolled_back(registry_url: str) -> None:
    class Boom(Exception):
        pass

    async def body(registry: Registry) -> list[KeyLimits]:
        with pytest.raises(Boom):
            async with registry._session(write=True) as session:
                await session.execute(
                    "INSERT INTO api_keys (name, secret_sha256, created_at) VALUES (?, ?, ?)", "half", "0" * 64, 0.0
                )
                raise Boom
        with pytest.raises(RegistryError):  # a driver error comes out as RegistryError, and rolls back too
            async with registry._session(write=True) as session:
                await session.execute(
                    "INSERT INTO api_keys (name, secret_sha256, created_at) VALUES (?, ?, ?)", "half", "1" * 64, 0.0
                )
                await session.execute("INSERT INTO no_such_table VALUES (1)")
        return await registry.keys()

    assert using(registry_url, body) == []


def test_concurrent_registrations_from_one_registry(registry_url: str) -> None:
    async def body(registry: Registry) -> list[Route]:
        await asyncio.gather(
            *(registry.register(Deployment(f"d{i}", f"m{i % 3}", (f"http://h{i}:1",))) for i in range(12))
        )
        return await registry.routes()

    routes = using(registry_url, body)
    assert [r.model for r in routes] == ["m0", "m1", "m2"]
    assert sum(len(r.endpoints) for r in routes) == 12


def test_leases_taken_at_once_through_several_connections_never_pass_a_keys_limit(registry_url: str) -> None:
    """Four router replicas (four connections) lease one request at a time, 40 at once each, from a key of 30 a
    minute: 30 leases in all; given back, a lease is there again; a key deleted and created anew starts full."""
    limits, one = KeyLimits("team", requests_per_min=30), Allowance(requests=1)

    async def main() -> tuple[int, float, tuple[Allowance, float], int]:
        registries = [await open_registry(registry_url) for _ in range(4)]
        try:
            await registries[0].create_key("team", requests_per_min=30)
            leases = await asyncio.gather(
                *(r.take_allowance(limits, one, one, now=1000.0) for r in registries for _ in range(40))
            )
            waits = [wait for lease, wait in leases if not lease]
            await registries[1].give_allowance(limits, Allowance(requests=2), now=1000.0)
            after = await registries[2].take_allowance(limits, Allowance(requests=5), one, now=1000.0)
            await registries[3].delete_key("team")
            await registries[3].create_key("team", requests_per_min=30)
            anew = await registries[0].take_allowance(limits, Allowance(requests=100), one, now=1000.0)
            return len(leases) - len(waits), min(waits), after, int(anew[0].requests)
        finally:
            for registry in registries:
                await registry.close()

    granted, wait, after, anew = asyncio.run(main())
    assert granted == 30
    assert wait == pytest.approx(2.0)  # a request refills in 60 / 30 s
    assert after == (Allowance(requests=2), 0.0)  # what was given back, no more
    assert anew == 30


def test_each_keys_allowance_left_is_its_buckets_refilled_to_now_or_full(registry_url: str) -> None:
    """What `vllm-fleet keys list` shows: a key not used yet is full, a leased one less its lease, refilling."""
    team = KeyLimits("team", requests_per_min=60, tokens_per_min=6000)

    async def body(registry: Registry) -> list[tuple[KeyLimits, Allowance]]:
        await registry.create_key("free")
        await registry.create_key("team", requests_per_min=60, tokens_per_min=6000)
        await registry.take_allowance(team, Allowance(40, 5000), Allowance(1, 100), now=1000.0)
        return await registry.allowances(now=1010.0)

    assert using(registry_url, body) == [
        (KeyLimits("free"), Allowance(0.0, 0.0)),  # unlimited: nothing counted
        (team, Allowance(20.0 + 10, 1000.0 + 1000)),  # 10 s refilled: 10 requests, 1,000 tokens
    ]


def test_postgres_scheme_alias_and_two_replicas_sharing_one_registry(postgres_url: str) -> None:
    """Two router replicas (two pools) on one PostgreSQL: what one registers the other routes."""
    alias = "postgres://" + postgres_url.split("://", 1)[1]

    async def main() -> list[Route]:
        async with await open_registry(postgres_url) as one, await open_registry(alias) as two:
            await one.register(Deployment("chat", "smollm2", ("http://10.0.0.1:8000",)))
            return await two.routes()

    assert asyncio.run(main()) == [Route("smollm2", "prefix", ("http://10.0.0.1:8000",), ("chat",))]
