"""The shared registry: PostgreSQL through an asyncpg pool, for several router replicas."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from vllm_fleet.errors import RegistryError
from vllm_fleet.registry.base import Registry, Session, numbered

if TYPE_CHECKING:
    import asyncpg

INSTALL_HINT = "pip install 'vllm-fleet[postgres]' (asyncpg)"
CONNECT_TIMEOUT_S = 10.0
POOL_MAX = 8  # the router's lookups are short; more connections only load the server


def _lock_key(what: str) -> int:
    """A stable signed 64-bit advisory lock key per operation, owned by vllm-fleet."""
    return int.from_bytes(hashlib.sha256(f"vllm-fleet:registry:{what}".encode()).digest()[:8], "big", signed=True)


class _PostgresSession:
    def __init__(self, connection: asyncpg.Connection):
        self._connection = connection

    async def execute(self, sql: str, *args: Any) -> None:
        await self._connection.execute(numbered(sql), *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in await self._connection.fetch(numbered(sql), *args)]


class PostgresRegistry(Registry):
    """The registry in a PostgreSQL database, shared by every router replica and ``up``."""

    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, url: str):
        self._pool = pool
        self.url = url

    @classmethod
    async def connect(cls, dsn: str, url: str) -> PostgresRegistry:
        """Open a connection pool to ``dsn`` (``url`` is its printable form)."""
        try:
            import asyncpg
        except ImportError as exc:
            raise RegistryError("the PostgreSQL registry needs asyncpg (not installed)", fix=INSTALL_HINT) from exc
        try:
            pool = await asyncpg.create_pool(dsn, min_size=1, max_size=POOL_MAX, timeout=CONNECT_TIMEOUT_S)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise RegistryError(
                f"registry {url}: cannot connect: {exc}",
                fix="check the host, port, database and credentials in the URL (and that the server runs)",
            ) from exc
        return cls(pool, url)

    @asynccontextmanager
    async def _session(self, write: bool) -> AsyncIterator[Session]:
        import asyncpg

        try:
            async with self._pool.acquire() as connection:
                if write:
                    async with connection.transaction():
                        yield _PostgresSession(connection)
                else:
                    yield _PostgresSession(connection)
        except (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            fix = "migrate the registry first (open_registry does)" if "does not exist" in str(exc) else None
            raise RegistryError(f"registry {self.url}: {exc}", fix=fix) from exc

    async def _serialize(self, session: Session, what: str) -> None:
        # Transaction-scoped: released at COMMIT/ROLLBACK, so a crashed holder cannot leave it taken.
        # (Without it two concurrent migrations race on CREATE TABLE IF NOT EXISTS and one fails.)
        await session.execute("SELECT pg_advisory_xact_lock(?)", _lock_key(what))

    async def close(self) -> None:
        await self._pool.close()
