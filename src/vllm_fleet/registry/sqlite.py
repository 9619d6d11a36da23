"""The embedded registry: one SQLite file (WAL), through aiosqlite so no query blocks the loop."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vllm_fleet.errors import RegistryError
from vllm_fleet.registry.base import Registry, Session

if TYPE_CHECKING:
    import aiosqlite

INSTALL_HINT = "pip install 'aiosqlite>=0.20' (a core dependency of vllm-fleet: reinstall it)"
BUSY_TIMEOUT_S = 10.0  # another process holding the write lock (a migrate, a register) is waited for this long


class _SQLiteSession:
    def __init__(self, connection: aiosqlite.Connection):
        self._connection = connection

    async def execute(self, sql: str, *args: Any) -> None:
        async with self._connection.execute(sql, args):
            pass

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self._connection.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]


class SQLiteRegistry(Registry):
    """The registry in one SQLite file: the default, for one machine (one router, ``up`` and the CLI)."""

    dialect = "sqlite"

    def __init__(self, connection: aiosqlite.Connection, url: str):
        self._connection = connection
        self.url = url
        # One connection: a coroutine's transaction must not interleave with another's statements.
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str, url: str) -> SQLiteRegistry:
        """Open (creating the file and its directory) the database at ``path``."""
        try:
            import aiosqlite
        except ImportError as exc:
            raise RegistryError("the SQLite registry needs aiosqlite (not installed)", fix=INSTALL_HINT) from exc
        if path != ":memory:":
            try:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"registry {url}: cannot create its directory: {exc}") from exc
        try:
            # isolation_level=None: no implicit transactions; _session issues BEGIN IMMEDIATE itself.
            connection = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            fix = "check the path and its permissions"
            raise RegistryError(f"registry {url}: cannot open: {exc}", fix=fix) from exc
        registry = cls(connection, url)
        try:
            async with registry._session(write=False) as session:
                # WAL: readers (the router) never wait for a writer (`up` registering).
                await session.execute("PRAGMA journal_mode=WAL")
                await session.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            await registry.close()
            raise
        return registry

    @asynccontextmanager
    async def _session(self, write: bool) -> AsyncIterator[Session]:
        async with self._lock:
            try:
                if write:
                    # IMMEDIATE takes the write lock now, so two writers queue rather than deadlock on upgrade.
                    await self._connection.execute("BEGIN IMMEDIATE")
                try:
                    yield _SQLiteSession(self._connection)
                except BaseException:
                    if write:
                        await self._connection.rollback()
                    raise
                if write:
                    await self._connection.commit()
            except sqlite3.Error as exc:
                raise RegistryError(f"registry {self.url}: {exc}", fix=_fix(exc)) from exc

    async def close(self) -> None:
        await self._connection.close()


def _fix(exc: sqlite3.Error) -> str | None:
    text = str(exc)
    if "no such table" in text:
        return "migrate the registry first (open_registry does)"
    if "locked" in text or "busy" in text:
        return "another process holds the registry's write lock; retry"
    if "readonly" in text:
        return "make the registry file and its directory writable"
    return None
