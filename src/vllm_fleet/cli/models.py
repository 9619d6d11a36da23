"""`vllm-fleet models` (what the router can route) and `vllm-fleet keys` (the router's API keys)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import typer
from rich.markup import escape

from vllm_fleet.cli.common import JsonOpt, console, err_console, errors, print_json, run
from vllm_fleet.registry import REFRESH_S, REGISTRY_ENV

if TYPE_CHECKING:
    from vllm_fleet.registry import Registry

T = TypeVar("T")

RegistryOpt = typer.Option(
    None,
    "--registry",
    envvar=REGISTRY_ENV,
    help="sqlite:///PATH or postgresql://USER@HOST/DB (default: registry.sqlite in $VLLM_FLEET_CACHE "
    "or .cache/vllm-fleet).",
    show_default=False,
)

keys_app = typer.Typer(
    name="keys", help="API keys for the router (stored hashed), each with optional limits.", no_args_is_help=True
)


async def _with_registry(url: str | None, call: Callable[[Registry], Awaitable[T]]) -> T:
    from vllm_fleet.registry import default_cache_root, default_registry_url, open_registry

    async with await open_registry(url or default_registry_url(default_cache_root())) as registry:
        return await call(registry)


def models(registry: str | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """List what the router can route: each model, its policy and its endpoints."""
    with errors(as_json):
        routes = run(_with_registry(registry, lambda r: r.routes()))
    if as_json:
        print_json([route.to_dict() for route in routes])
        return
    if not routes:
        console.print("no models registered (`vllm-fleet up` registers a deployment once verify passes)")
        return
    from rich.table import Table

    table = Table(title="routable models", title_justify="left")
    for column in ("model", "policy", "endpoints", "deployments"):
        table.add_column(column, overflow="fold")
    for route in routes:
        table.add_row(route.model, route.policy, "\n".join(route.endpoints), ", ".join(route.deployments))
    console.print(table)


@keys_app.command("create")
def create_key(
    name: str = typer.Argument(..., help="The key's name (letters, digits, . _ @ -)."),
    rpm: int | None = typer.Option(None, "--rpm", min=1, help="Requests per minute (default: unlimited)."),
    tpm: int | None = typer.Option(None, "--tpm", min=1, help="Tokens per minute (default: unlimited)."),
    registry: str | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Create an API key and print its secret, this once (only its hash is stored)."""
    with errors(as_json):
        secret = run(_with_registry(registry, lambda r: r.create_key(name, rpm, tpm)))
    if as_json:
        print_json({"name": name, "secret": secret, "requests_per_min": rpm, "tokens_per_min": tpm})
        return
    err_console.print(f"created API key {escape(name)}: every router accepts it within its registry refresh "
                      f"({REFRESH_S:.0f} s), and while any key exists a request without one gets a 401. Its secret "
                      "(shown only now, store it safely):")  # fmt: skip
    print(secret)  # alone on stdout, so `SECRET=$(vllm-fleet keys create NAME)` captures it


@keys_app.command("list")
def list_keys(registry: str | None = RegistryOpt, as_json: bool = JsonOpt) -> None:
    """List the API keys: names, limits and what each has left now (secrets are never stored)."""

    with errors(as_json):
        keys = run(_with_registry(registry, lambda r: r.allowances()))
    rows = [(key, _left(key.requests_per_min, now.requests), _left(key.tokens_per_min, now.tokens))
            for key, now in keys]  # fmt: skip
    if as_json:
        print_json([key.to_dict() | {"requests_left": requests, "tokens_left": tokens} for key, requests, tokens in
                    rows])  # fmt: skip
        return
    if not rows:
        console.print("no API keys; create one: vllm-fleet keys create NAME [--rpm N] [--tpm N]")
        return
    from rich.table import Table

    table = Table(title="API keys (left: in the registry now; router replicas may hold a second's more)",
                  title_justify="left")  # fmt: skip
    table.add_column("name")
    for column in ("requests/min", "left", "tokens/min", "left"):
        table.add_column(column, justify="right")
    for key, requests, tokens in rows:
        table.add_row(key.name, _limit(key.requests_per_min), _limit(requests), _limit(key.tokens_per_min),
                      _limit(tokens))  # fmt: skip
    console.print(table)


@keys_app.command("delete")
def delete_key(
    name: str = typer.Argument(..., help="The key's name."),
    registry: str | None = RegistryOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Delete an API key: every router refuses its secret within its registry refresh (5 s). Exit 1 if there is
    none."""
    with errors(as_json):
        deleted = run(_with_registry(registry, lambda r: r.delete_key(name)))
    if as_json:
        print_json({"name": name, "deleted": deleted})
    elif deleted:
        console.print(f"deleted API key {escape(name)}: every router refuses it within its registry refresh"
                      f" ({REFRESH_S:.0f} s)")  # fmt: skip
    else:
        err_console.print(f"[bold red]error:[/] no API key named {escape(repr(name))} (see: vllm-fleet keys list)")
    if not deleted:
        raise typer.Exit(1)


def _limit(value: int | None) -> str:
    return "unlimited" if value is None else str(value)


def _left(limit: int | None, level: float) -> int | None:
    """What a bucket has left, in whole units (a debt shows as negative); None for an unlimited one."""
    return None if limit is None else math.floor(level)


def register(app: typer.Typer) -> None:
    app.command()(models)
    app.add_typer(keys_app)
