"""The registry's schema, as numbered steps applied in order and recorded in ``schema_version``.

Rules for a new step: append it with the next number, never edit or reorder a released one (a
registry that applied it will not apply it again). Every statement must mean the same on SQLite and
PostgreSQL (``TEXT``, ``INTEGER``, ``BIGINT``, ``DOUBLE PRECISION``, ``CREATE INDEX``); when a step
cannot, give it a ``postgres`` variant. No ``?`` inside literals: PostgreSQL's placeholders are
rewritten from ``?`` (see ``base.numbered``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One schema step: its number, what it does, and its statements (a ``postgres`` variant if it must differ)."""

    version: int
    description: str
    statements: tuple[str, ...]
    postgres: tuple[str, ...] | None = None

    def for_dialect(self, dialect: str) -> tuple[str, ...]:
        return self.postgres if dialect == "postgresql" and self.postgres is not None else self.statements


# Created before any step runs (it records them); kept out of MIGRATIONS so it is never versioned itself.
SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " description TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "deployments and their endpoints",
        (
            # seq orders registrations: a model's route takes the policy of its latest deployment.
            "CREATE TABLE deployments ("
            " name TEXT PRIMARY KEY,"
            " model TEXT NOT NULL,"
            " policy TEXT NOT NULL,"
            " seq BIGINT NOT NULL,"
            " registered_at DOUBLE PRECISION NOT NULL)",
            "CREATE INDEX deployments_model ON deployments (model)",
            "CREATE TABLE endpoints ("
            " deployment TEXT NOT NULL REFERENCES deployments (name) ON DELETE CASCADE,"
            " position INTEGER NOT NULL,"
            " url TEXT NOT NULL,"
            " PRIMARY KEY (deployment, url))",
        ),
    ),
    Migration(
        2,
        "API keys (hashed) with per-key limits",
        (
            "CREATE TABLE api_keys ("
            " name TEXT PRIMARY KEY,"
            " secret_sha256 TEXT NOT NULL UNIQUE,"
            " requests_per_min INTEGER,"
            " tokens_per_min BIGINT,"
            " created_at DOUBLE PRECISION NOT NULL)",
        ),
    ),
    Migration(
        3,
        "each router replica's spend per API key (limits shared by the replicas)",
        (
            # Totals since the replica started; a row not updated for a while is a replica gone.
            "CREATE TABLE key_spend ("
            " replica TEXT NOT NULL,"
            " key_name TEXT NOT NULL,"
            " requests DOUBLE PRECISION NOT NULL,"
            " tokens DOUBLE PRECISION NOT NULL,"
            " updated_at DOUBLE PRECISION NOT NULL,"
            " PRIMARY KEY (replica, key_name))",
        ),
    ),
    Migration(
        4,
        "one pair of token buckets per API key, which the router replicas take leases from (replaces key_spend)",
        (
            "CREATE TABLE key_buckets ("
            " key_name TEXT PRIMARY KEY,"
            " requests DOUBLE PRECISION NOT NULL,"
            " tokens DOUBLE PRECISION NOT NULL,"
            " stamp DOUBLE PRECISION NOT NULL)",
            "DROP TABLE key_spend",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version
