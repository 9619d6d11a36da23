"""`vllm-fleet router`: one OpenAI-compatible endpoint in front of OpenAI-compatible servers."""

from __future__ import annotations

import typer

from vllm_fleet.cli.common import errors, run
from vllm_fleet.registry import REGISTRY_ENV


def router(
    backend: list[str] = typer.Option([], "--backend", "-b", help="A server root to route to (repeat it)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 in a pod)."),
    port: int = typer.Option(8000, min=0, max=65535, help="Port to listen on."),
    policy: str = typer.Option("prefix", help="prefix | least-load | round-robin | session."),
    retries: int = typer.Option(2, min=0, max=10, help="Other backends tried before the first response byte."),
    registry: str | None = typer.Option(
        None,
        envvar=REGISTRY_ENV,
        help="Models and keys: sqlite:///PATH or postgresql://... (shared by router replicas).",
    ),
    discover_k8s: str | None = typer.Option(
        None, "--discover-k8s", help="NAMESPACE/SERVICE:PORT: route to that Service's ready endpoints (in a pod)."
    ),
    admin_token: str | None = typer.Option(
        None, envvar="VLLM_FLEET_ROUTER_ADMIN_TOKEN", help="Require this bearer token on /admin/*."
    ),
    max_body_mb: float = typer.Option(32, min=0.001, help="Largest request body accepted (413 above)."),
    max_head_kb: float = typer.Option(64, min=1, help="Largest request line and headers accepted (431 above)."),
    request_timeout: float = typer.Option(
        60.0, min=0.1, help="Seconds a request's head or body may stop arriving before a 408."
    ),
    health_interval: float = typer.Option(2.0, min=0.05, help="Seconds between health checks of a backend."),
    eject_after: int = typer.Option(3, min=1, help="Failed requests in a row that eject a backend."),
    shutdown_timeout: float = typer.Option(30.0, min=0, help="Seconds in-flight requests get on SIGTERM."),
    access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="A log line per request."),
) -> None:
    """Serve one endpoint in front of the backends: prefix- and load-aware, retries before the first byte."""
    import logging

    from vllm_fleet.errors import SpecError
    from vllm_fleet.router.backends import PoolSettings, backend_url
    from vllm_fleet.router.config import RouterConfig
    from vllm_fleet.router.policies import NAMES
    from vllm_fleet.router.server import serve

    with errors():
        if policy not in NAMES:
            raise SpecError(f"--policy {policy!r} is not a routing policy", fix=f"use one of {', '.join(NAMES)}")
        if not (backend or registry or discover_k8s):
            raise SpecError("the router has nothing to route to", fix="give --backend URL (or --registry URL)")
        try:
            backends = tuple(backend_url(url) for url in backend)
        except ValueError as exc:
            raise SpecError(f"--backend {exc}", fix="give each --backend as http(s)://HOST:PORT") from None
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("vllm_fleet.router.access").disabled = not access_log
        config = RouterConfig(
            backends=backends,
            host=host,
            port=port,
            policy=policy,
            retries=retries,
            registry=registry,
            discover=discover_k8s,
            admin_token=admin_token,
            max_body_bytes=int(max_body_mb * 1024 * 1024),
            max_head_bytes=int(max_head_kb * 1024),
            request_timeout_s=request_timeout,
            shutdown_timeout_s=shutdown_timeout,
            pool=PoolSettings(health_interval_s=health_interval, eject_after=eject_after),
        )
        try:
            run(serve(config, on_ready=lambda r: print(f"routing on {r.url}", flush=True)))
        except OSError as exc:
            raise SpecError(f"the router cannot listen on {host}:{port}: {exc.strerror}", fix="pick --port") from exc


def register(app: typer.Typer) -> None:
    app.command()(router)
