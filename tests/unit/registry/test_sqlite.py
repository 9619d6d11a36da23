"""The embedded registry on SQLite in tmp_path: migrations, deployments, hashed keys, URLs."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from vllm_fleet.errors import FleetError, RegistryError, SpecError
from vllm_fleet.registry import Deployment, KeyLimits, Route, default_registry_url, open_registry, redact
from vllm_fleet.registry.base import hash_secret
from vllm_fleet.registry.migrations import LATEST, MIGRATIONS


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def test_migrations_are_numbered_in_order() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    assert len(MIGRATIONS) == LATEST


def test_migrate_twice_is_a_no_op(tmp_path: Path) -> None:
    async def main() -> tuple[list[int], list[int], list[int]]:
        registry = await open_registry(url_of(tmp_path / "r.sqlite"), migrate=False)
        async with registry:
            first, second = await registry.migrate(), await registry.migrate()
        async with await open_registry(url_of(tmp_path / "r.sqlite"), migrate=False) as again:
            return first, second, await again.migrate()

    assert asyncio.run(main()) == (list(range(1, LATEST + 1)), [], [])
    with sqlite3.connect(tmp_path / "r.sqlite") as db:
        assert [row[0] for row in db.execute("SELECT version FROM schema_version ORDER BY version")] == list(
            range(1, LATEST + 1)
        )


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    url = url_of(tmp_path / "r.sqlite")

    async def main() -> None:
        async with await open_registry(url):
            pass
        with sqlite3.connect(tmp_path / "r.sqlite") as db:
            db.execute("INSERT INTO schema_version VALUES (99, 'from the future', 0)")
        db.close()
        await open_registry(url)

    with pytest.raises(RegistryError, match="schema version 99"):
        asyncio.run(main())


def test_register_deregister_and_routes(tmp_path: Path) -> None:
    async def main() -> None:
        async with await open_registry(url_of(tmp_path / "sub" / "dir" / "r.sqlite")) as registry:
            await registry.register(Deployment("a", "m", ("http://a:1",), "prefix"))
            await registry.register(Deployment("b", "m", ("http://b:1", "http://a:1"), "least-load"))
            assert await registry.routes() == [Route("m", "least-load", ("http://a:1", "http://b:1"), ("a", "b"))]
            assert await registry.deregister("b")
            assert await registry.routes() == [Route("m", "prefix", ("http://a:1",), ("a",))]
            assert not await registry.deregister("b")

    asyncio.run(main())


def test_key_secrets_are_stored_only_hashed(tmp_path: Path) -> None:
    async def main() -> str:
        async with await open_registry(url_of(tmp_path / "r.sqlite")) as registry:
            secret = await registry.create_key("alice", requests_per_min=5)
            assert await registry.check_key(secret) == KeyLimits("alice", 5, None)
            assert "vf-" not in repr(await registry.keys())
            return secret

    secret = asyncio.run(main())
    stored = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the db and any -wal/-shm left over
    assert b"alice" in stored  # the row is there ...
    assert secret.encode() not in stored and secret[3:].encode() not in stored  # ... its secret is not
    assert hash_secret(secret).encode() in stored


def test_an_unusable_path_is_a_registry_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    with pytest.raises(RegistryError, match="cannot create its directory"):
        asyncio.run(open_registry(url_of(tmp_path / "a-file" / "r.sqlite")))


@pytest.mark.parametrize(
    "url, says",
    [
        ("mysql://u@h/db", "of no known kind"),
        ("registry.sqlite", "of no known kind"),
        ("sqlite://", "no file path"),
        ("sqlite:///", "no file path"),
        ("sqlite://host/x.db", "no file path"),
        ("postgresql:///db", "names no server"),
        ("postgresql://u:hunter2@[::1/db", "cannot be parsed"),
    ],
)
def test_bad_urls_name_the_accepted_forms(url: str, says: str) -> None:
    with pytest.raises(SpecError) as caught:
        asyncio.run(open_registry(url))
    message = str(caught.value)
    assert says in message and "sqlite:///PATH" in message and "postgresql://" in message
    assert "\n" not in message and "hunter2" not in message
    assert isinstance(caught.value, FleetError) and caught.value.exit_code == 2


def test_an_unreachable_postgres_is_a_registry_error_without_the_password() -> None:
    from tests.servers import free_port

    with pytest.raises(RegistryError) as caught:
        asyncio.run(open_registry(f"postgresql://u:hunter2@127.0.0.1:{free_port()}/db"))
    assert "cannot connect" in str(caught.value) and "hunter2" not in str(caught.value)


def test_default_url_and_redaction(tmp_path: Path) -> None:
    assert default_registry_url(tmp_path) == f"sqlite:///{tmp_path}/registry.sqlite"
    assert default_registry_url(Path("rel")).startswith(f"sqlite:///{Path.cwd()}/rel/")
    assert redact("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert redact("postgresql://bob@db/x") == "postgresql://bob@db/x"
