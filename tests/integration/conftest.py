"""Integration fixtures shared by the registry and router tests: a registry URL per backend kind (an SQLite
file, a fresh PostgreSQL database)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers.postgres import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.sqlite'}"
    return request.getfixturevalue("postgres_url")
