"""`vllm-fleet models` and `vllm-fleet keys` on an SQLite registry, on an app of their own."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from vllm_fleet.cli import models as models_cli
from vllm_fleet.registry import Deployment, open_registry


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _main() -> None:
        pass

    models_cli.register(app)
    return app


def invoke(app: typer.Typer, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def test_models_lists_routes(app: typer.Typer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    code, out = invoke(app, "models", "--registry", url)
    assert code == 0 and "no models registered" in out

    async def register() -> None:
        async with await open_registry(url) as registry:
            await registry.register(Deployment("chat", "smollm2", ("http://127.0.0.1:8001",), "least-load"))

    asyncio.run(register())
    code, out = invoke(app, "models", "--registry", url, "--json")
    assert code == 0
    assert json.loads(out) == [
        {"model": "smollm2", "policy": "least-load", "endpoints": ["http://127.0.0.1:8001"], "deployments": ["chat"]}
    ]
    assert "smollm2" in invoke(app, "models", "--registry", url)[1]


def test_the_default_registry_is_under_the_cache_dir(
    app: typer.Typer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLLM_FLEET_CACHE", str(tmp_path / "cache"))
    assert invoke(app, "keys", "list")[0] == 0
    assert (tmp_path / "cache" / "registry.sqlite").is_file()


def test_keys_create_list_delete(app: typer.Typer, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.sqlite'}"
    code, out = invoke(app, "keys", "create", "alice", "--rpm", "10", "--registry", url)
    secret = out.strip()
    assert code == 0 and secret.startswith("vf-") and "\n" not in secret
    code, out = invoke(app, "keys", "list", "--registry", url, "--json")
    assert json.loads(out) == [
        {"name": "alice", "requests_per_min": 10, "tokens_per_min": None, "requests_left": 10, "tokens_left": None}
    ]
    table = invoke(app, "keys", "list", "--registry", url)[1]
    assert secret not in table and "alice" in table and "unlimited" in table
    assert invoke(app, "keys", "create", "alice", "--registry", url)[0] == 1  # exists
    assert invoke(app, "keys", "create", "bad name", "--registry", url)[0] == 2
    assert invoke(app, "keys", "create", "zero", "--tpm", "0", "--registry", url)[0] == 2
    assert invoke(app, "keys", "delete", "alice", "--registry", url)[0] == 0
    assert invoke(app, "keys", "delete", "alice", "--registry", url)[0] == 1
    code, out = invoke(app, "keys", "create", "bob", "--registry", url, "--json")
    assert code == 0 and json.loads(out)["secret"].startswith("vf-")


def test_a_bad_registry_url_is_exit_2_with_json(app: typer.Typer) -> None:
    code, out = invoke(app, "models", "--registry", "mysql://x/y", "--json")
    assert code == 2 and json.loads(out)["kind"] == "SpecError"
