"""A real PostgreSQL (Debian's binaries) on a loopback port, for the registry's integration tests.

``initdb`` into a temporary directory, then ``postgres`` on a free port with its unix socket in
that directory, ``fsync=off`` (throwaway data). PostgreSQL refuses to run as root, so under root
both run as ``nobody`` through ``setpriv`` (which execs, so the child we hold is postgres itself)
in a directory that user owns, made outside pytest's root-only tmp dir.

Missing binaries skip the tests, except under ``CI``, where they fail: CI installs ``postgresql``.
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import free_port

USER = "fleet"  # the database superuser initdb creates (trust auth on loopback only)
_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/bin", "/usr/local/pgsql/bin")


def find_bin_dir() -> Path | None:
    """The directory holding both ``initdb`` and ``postgres``: PATH first, then the newest Debian version."""
    initdb = shutil.which("initdb")
    if initdb and (Path(initdb).resolve().parent / "postgres").is_file():
        return Path(initdb).resolve().parent
    candidates = sorted(
        (Path(d) for pattern in _SEARCH for d in glob.glob(pattern)),
        key=lambda d: [int(p) if p.isdigit() else 0 for p in d.parts],
        reverse=True,
    )
    return next((d for d in candidates if (d / "initdb").is_file() and (d / "postgres").is_file()), None)


class Postgres:
    """One PostgreSQL server: ``with Postgres(bin_dir) as pg: pg.url``."""

    def __init__(self, bin_dir: Path):
        self.bin_dir = bin_dir
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="vf-postgres-"))
        self.data = self.workdir / "data"
        self.log = self.workdir / "postgres.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("nobody")
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            self._as = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _command(self, name: str, *args: str) -> list[str]:
        return [*self._as, str(self.bin_dir / name), *args]

    def start(self) -> None:
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        init = subprocess.run(
            self._command("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8"),
            capture_output=True,
            env=env,
            cwd=self.workdir,
        )
        if init.returncode != 0:
            pytest.fail(f"initdb failed ({init.returncode}): {init.stderr.decode(errors='replace')[-2000:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "60",
        }
        args = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data), *args),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + 30
        while not asyncio.run(self._accepts()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"postgres did not start: {self.log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)

    async def _accepts(self) -> bool:
        import asyncpg

        try:
            connection = await asyncpg.connect(self.url, timeout=2)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
            return False  # not listening yet, or "the database system is starting up"
        await connection.close()
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast shutdown": disconnects clients, no waiting on them
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def create_database(server_url: str, name: str) -> str:
    """A fresh database on the server: each test gets its own, so no state leaks between them."""
    import asyncpg

    connection = await asyncpg.connect(server_url)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A PostgreSQL server for the session; yields the URL of its ``postgres`` database."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        message = (
            "PostgreSQL not installed: no initdb/postgres on PATH or in /usr/lib/postgresql/*/bin (apt: postgresql)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with Postgres(bin_dir) as server:
        yield server.url


@pytest.fixture
def postgres_url(postgres_server: str, request: pytest.FixtureRequest) -> str:
    """The URL of a new, empty database for this test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50] + f"_{free_port()}"
    return asyncio.run(create_database(postgres_server, name))
