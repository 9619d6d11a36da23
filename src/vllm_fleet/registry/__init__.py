"""The model registry behind the router: models → deployments → endpoints, routing policy, API keys.

    registry = await open_registry(url)      # sqlite:///PATH (default) or postgresql://...
    async with registry:
        await registry.register(Deployment("chat", "smollm2", ("http://127.0.0.1:8001",)))
        routes = await registry.routes()

SQLite (a file under the cache dir) is the embedded default; PostgreSQL is for a registry shared
by several router replicas. The drivers are imported only when a registry of that kind is opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from vllm_fleet.errors import SpecError
from vllm_fleet.registry.base import Registry
from vllm_fleet.registry.records import Deployment, KeyLimits, Route

__all__ = [
    "REFRESH_S",
    "REGISTRY_ENV",
    "Deployment",
    "KeyLimits",
    "Registry",
    "Route",
    "default_cache_root",
    "default_registry_url",
    "open_registry",
    "redact",
]

ACCEPTED = "sqlite:///PATH (sqlite:////ABSOLUTE/PATH) or postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
CACHE_ENV = "VLLM_FLEET_CACHE"
# The registry URL from the environment (or a Kubernetes Secret's key): a URL with a password never goes
# into a spec, a command line or a manifest.
REGISTRY_ENV = "VLLM_FLEET_REGISTRY"
# A router re-reads the registry this often: a new route, key or limit reaches every router replica within it.
REFRESH_S = 5.0
DEFAULT_CACHE = ".cache/vllm-fleet"  # spec.cache.dir's default


def default_cache_root() -> Path:
    """The cache dir when there is no spec to read it from: ``$VLLM_FLEET_CACHE`` or ``.cache/vllm-fleet``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def default_registry_url(cache_root: Path) -> str:
    """The embedded registry of a cache dir: ``sqlite:///<cache_root>/registry.sqlite`` (absolute)."""
    return "sqlite:///" + str(cache_root.expanduser().absolute() / "registry.sqlite")


def redact(url: str) -> str:
    """``url`` with its password (if any) masked, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


async def open_registry(url: str, *, migrate: bool = True) -> Registry:
    """Open the registry at ``url`` and (unless told not to) bring its schema up to date.

    ``sqlite:///PATH`` (relative to the working directory; ``sqlite:////abs/path`` absolute, as in
    SQLAlchemy) or ``postgresql://...`` / ``postgres://...`` (anything asyncpg accepts). A URL of
    another form is a ``SpecError``; a server that cannot be reached a ``RegistryError``.
    """
    shown = redact(url)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    registry: Registry
    if scheme == "sqlite":
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise _bad_url(shown, "has no file path")
        from vllm_fleet.registry.sqlite import SQLiteRegistry

        path = url[len("sqlite:///") :]
        registry = await SQLiteRegistry.connect(path if path == ":memory:" else os.path.expanduser(path), shown)
    elif scheme in ("postgresql", "postgres"):
        try:
            host = urlsplit(url).netloc
        except ValueError as exc:
            raise _bad_url(shown, f"cannot be parsed ({exc})") from exc
        if not host and "host=" not in url:
            raise _bad_url(shown, "names no server")
        from vllm_fleet.registry.postgres import PostgresRegistry

        registry = await PostgresRegistry.connect(url, shown)
    else:
        raise _bad_url(shown, "is of no known kind")
    if migrate:
        try:
            await registry.migrate()
        except BaseException:
            await registry.close()
            raise
    return registry


def _bad_url(shown: str, why: str) -> SpecError:
    return SpecError(f"registry URL {shown!r} {why}: use {ACCEPTED}")
