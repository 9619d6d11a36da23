"""The registry interface and all of its logic, written once over a two-method ``Session``.

A backend (``sqlite.py``, ``postgres.py``) supplies only what truly differs: how a session is
opened (one connection behind a lock vs a pool), how a write transaction serializes, and how
``?`` placeholders are spelled (PostgreSQL's ``$1``, via ``numbered``). Every statement is here.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import lru_cache
from types import TracebackType
from typing import Any, ClassVar, Protocol, Self, TypeVar

from vllm_fleet.errors import RegistryError, SpecError
from vllm_fleet.registry.limits import Allowance, Buckets
from vllm_fleet.registry.migrations import LATEST, MIGRATIONS, SCHEMA_VERSION_TABLE
from vllm_fleet.registry.records import Deployment, KeyLimits, Route, merge_routes

SECRET_PREFIX = "vf-"
_KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,127}")
T = TypeVar("T")


class Session(Protocol):
    """One connection for the span of a ``Registry._session``; SQL uses ``?`` placeholders."""

    async def execute(self, sql: str, *args: Any) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...


@lru_cache(maxsize=256)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, ...`` (no statement here has ``?`` in a literal)."""
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))


def hash_secret(secret: str) -> str:
    """What the registry stores for an API key: the SHA-256 of its secret, hex.

    A fast hash is enough here, unlike for passwords: bcrypt/scrypt/argon2 exist to slow down
    guessing low-entropy secrets people choose, while these are 24 bytes (192 bits) from
    ``secrets``: no amount of hashing speed makes 2**192 guesses feasible, so a leaked table gives
    nothing away. The lookup is by hash, so no comparison of secrets can leak timing either.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


class Registry(ABC):
    """Models → deployments → endpoints, routing policy and API keys; async, usable as ``async with``.

    Obtain one with ``vllm_fleet.registry.open_registry(url)``, which also migrates the schema.
    """

    dialect: ClassVar[str]
    url: str  # the URL with any password masked: safe to print

    # --- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _session(self, write: bool) -> AbstractAsyncContextManager[Session]:
        """A connection; with ``write`` one transaction, committed on success, rolled back on error.

        Driver errors raised inside it come out as ``RegistryError``.
        """

    async def _serialize(self, session: Session, what: str) -> None:  # noqa: B027 (a no-op hook by design)
        """Make concurrent write transactions doing ``what`` wait for each other (SQLite's writes already do)."""

    @abstractmethod
    async def close(self) -> None:
        """Release the connection(s)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- schema ------------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        """Apply the pending schema steps in one transaction; return their numbers (``[]``: up to date).

        Safe to run from several processes at once: the transaction is serialized (PostgreSQL: an
        advisory lock taken before anything is created; SQLite: ``BEGIN IMMEDIATE``).
        """
        applied = []
        async with self._session(write=True) as session:
            await self._serialize(session, "migrate")
            await session.execute(SCHEMA_VERSION_TABLE)
            current = await self._version(session)
            if current > LATEST:
                raise RegistryError(
                    f"registry {self.url} has schema version {current}; this vllm-fleet knows up to {LATEST}",
                    fix="upgrade vllm-fleet to the version the other routers run",
                )
            for migration in MIGRATIONS:
                if migration.version <= current:
                    continue
                for statement in migration.for_dialect(self.dialect):
                    await session.execute(statement)
                await session.execute(
                    "INSERT INTO schema_version (version, description, applied_at) VALUES (?, ?, ?)",
                    migration.version,
                    migration.description,
                    time.time(),
                )
                applied.append(migration.version)
        return applied

    async def schema_version(self) -> int:
        """The last schema step applied (0: none)."""
        async with self._session(write=False) as session:
            await session.execute(SCHEMA_VERSION_TABLE)
            return await self._version(session)

    @staticmethod
    async def _version(session: Session) -> int:
        rows = await session.fetch("SELECT MAX(version) FROM schema_version")
        return int(rows[0][0] or 0)

    # --- deployments -------------------------------------------------------------------------

    async def register(self, deployment: Deployment) -> None:
        """Add or replace the deployment ``deployment.name`` (its endpoints replaced as a whole)."""
        async with self._session(write=True) as session:
            # One writer at a time gives each registration its own seq (PostgreSQL: advisory lock).
            await self._serialize(session, "register")
            await session.execute("DELETE FROM endpoints WHERE deployment = ?", deployment.name)
            await session.execute(
                "INSERT INTO deployments (name, model, policy, seq, registered_at)"
                " VALUES (?, ?, ?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deployments), ?)"
                " ON CONFLICT (name) DO UPDATE SET model = excluded.model, policy = excluded.policy,"
                " seq = excluded.seq, registered_at = excluded.registered_at",
                deployment.name,
                deployment.model,
                deployment.policy,
                time.time(),
            )
            for position, url in enumerate(deployment.endpoints):
                await session.execute(
                    "INSERT INTO endpoints (deployment, position, url) VALUES (?, ?, ?)",
                    deployment.name,
                    position,
                    url,
                )

    async def deregister(self, name: str) -> bool:
        """Remove the deployment ``name``; False if there was none."""
        async with self._session(write=True) as session:
            if not await session.fetch("SELECT 1 FROM deployments WHERE name = ?", name):
                return False
            await session.execute("DELETE FROM endpoints WHERE deployment = ?", name)
            await session.execute("DELETE FROM deployments WHERE name = ?", name)
            return True

    async def deployments(self) -> list[Deployment]:
        """Every deployment, oldest registration first."""
        async with self._session(write=False) as session:
            rows = await session.fetch(
                "SELECT d.name, d.model, d.policy, e.url FROM deployments d"
                " JOIN endpoints e ON e.deployment = d.name ORDER BY d.seq, d.name, e.position"
            )
        grouped: dict[str, tuple[str, str, list[str]]] = {}
        for name, model, policy, url in rows:
            grouped.setdefault(name, (model, policy, []))[2].append(url)
        return [Deployment(name, model, tuple(urls), policy) for name, (model, policy, urls) in grouped.items()]

    async def routes(self) -> list[Route]:
        """What is routable: one route per model, its deployments merged (see ``merge_routes``)."""
        return merge_routes(await self.deployments())

    # --- API keys ----------------------------------------------------------------------------

    async def create_key(
        self, name: str, requests_per_min: int | None = None, tokens_per_min: int | None = None
    ) -> str:
        """Create the API key ``name``; return its secret, which is shown this once and stored only hashed."""
        if not _KEY_NAME.fullmatch(name):
            raise SpecError(
                f"API key name {name!r} is not allowed",
                fix="use letters, digits and . _ @ - (up to 128, starting with a letter or digit)",
            )
        for label, limit in (("requests_per_min", requests_per_min), ("tokens_per_min", tokens_per_min)):
            if limit is not None and limit < 1:
                raise SpecError(f"API key {name!r}: {label} must be at least 1", fix="omit it for no limit")
        secret = SECRET_PREFIX + secrets.token_urlsafe(24)
        async with self._session(write=True) as session:
            if await session.fetch("SELECT 1 FROM api_keys WHERE name = ?", name):
                raise RegistryError(
                    f"API key {name!r} already exists",
                    fix=f"vllm-fleet keys delete {name}, then create it again (that is how a key is rotated)",
                )
            await session.execute(
                "INSERT INTO api_keys (name, secret_sha256, requests_per_min, tokens_per_min, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                name,
                hash_secret(secret),
                requests_per_min,
                tokens_per_min,
                time.time(),
            )
        return secret

    async def check_key(self, secret: str) -> KeyLimits | None:
        """The key whose secret this is, with its limits; None for an unknown secret."""
        async with self._session(write=False) as session:
            rows = await session.fetch(
                "SELECT name, requests_per_min, tokens_per_min FROM api_keys WHERE secret_sha256 = ?",
                hash_secret(secret),
            )
        return KeyLimits(*rows[0]) if rows else None

    async def delete_key(self, name: str) -> bool:
        """Delete the API key ``name``; False if there was none."""
        async with self._session(write=True) as session:
            if not await session.fetch("SELECT 1 FROM api_keys WHERE name = ?", name):
                return False
            await session.execute("DELETE FROM api_keys WHERE name = ?", name)
            await session.execute("DELETE FROM key_buckets WHERE key_name = ?", name)  # a new key starts full
            return True

    async def keys(self) -> list[KeyLimits]:
        """Every API key's name and limits, by name (never a secret or a hash)."""
        async with self._session(write=False) as session:
            rows = await session.fetch("SELECT name, requests_per_min, tokens_per_min FROM api_keys ORDER BY name")
        return [KeyLimits(*row) for row in rows]

    # --- the keys' buckets, which router replicas take leases from ---------------------------

    async def allowances(self, now: float | None = None) -> list[tuple[KeyLimits, Allowance]]:
        """Every API key, by name, with its allowance in the registry now: what its buckets hold (full for a key
        not used yet). Router replicas may hold up to about a second of its rate more, leased and not spent."""
        now = time.time() if now is None else now
        async with self._session(write=False) as session:
            rows = await session.fetch(
                "SELECT k.name, k.requests_per_min, k.tokens_per_min, b.requests, b.tokens, b.stamp FROM api_keys k"
                " LEFT JOIN key_buckets b ON b.key_name = k.name ORDER BY k.name"
            )
        left = []
        for name, rpm, tpm, *bucket in rows:
            limits = KeyLimits(name, rpm, tpm)
            left.append((limits, Buckets.stored(limits, bucket, now).left(limits, now)))
        return left

    async def take_allowance(
        self, limits: KeyLimits, want: Allowance, need: Allowance, owed: float = 0.0, now: float | None = None
    ) -> tuple[Allowance, float]:
        """Take a lease of up to ``want`` from key ``limits.name``'s buckets if at least ``need`` is there, once
        the tokens ``owed`` are paid in: (the lease, 0.0); else (nothing, seconds until ``need`` would be).
        Atomic across router replicas."""
        return await self._buckets(limits, now, lambda buckets, at: buckets.take(limits, want, need, at, owed))

    async def give_allowance(self, limits: KeyLimits, amount: Allowance, now: float | None = None) -> None:
        """Put a lease's unused part back into key ``limits.name``'s buckets."""
        await self._buckets(limits, now, lambda buckets, at: buckets.give(limits, amount, at))

    async def _buckets(self, limits: KeyLimits, now: float | None, change: Callable[[Buckets, float], T]) -> T:
        now = time.time() if now is None else now  # wall clock: the replicas share it (within NTP's error)
        async with self._session(write=True) as session:
            await self._serialize(session, f"key-buckets:{limits.name}")
            sql = "SELECT requests, tokens, stamp FROM key_buckets WHERE key_name = ?"
            rows = await session.fetch(sql, limits.name)
            buckets = Buckets.stored(limits, rows[0] if rows else None, now)
            out = change(buckets, now)
            await session.execute(
                "INSERT INTO key_buckets (key_name, requests, tokens, stamp) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (key_name) DO UPDATE SET requests = excluded.requests,"
                " tokens = excluded.tokens, stamp = excluded.stamp",
                limits.name,
                buckets.requests,
                buckets.tokens,
                buckets.stamp,
            )
        return out
