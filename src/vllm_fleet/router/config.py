"""How a router runs: what `vllm-fleet router` and the targets start it with."""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_fleet.registry import REFRESH_S
from vllm_fleet.router.backends import PoolSettings


@dataclass(frozen=True)
class RouterConfig:
    backends: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 8000
    policy: str = "prefix"
    retries: int = 2
    registry: str | None = None  # sqlite:///… or postgresql://…; None: the backends given, no keys
    registry_refresh_s: float = REFRESH_S  # several router replicas share one registry: each re-reads it this often
    discover: str | None = None  # NAMESPACE/SERVICE:PORT: the backends are that Service's ready endpoints
    admin_token: str | None = None  # when set, /admin/* needs `Authorization: Bearer <token>`
    max_body_bytes: int = 32 * 1024 * 1024
    max_head_bytes: int = 64 * 1024  # request line and headers (431 above)
    request_timeout_s: float = 60.0  # a request whose head or body stops arriving this long gets a 408
    connect_timeout_s: float = 5.0
    shutdown_timeout_s: float = 30.0  # in-flight requests get this long to finish on SIGTERM
    access_log: bool = True
    pool: PoolSettings = field(default_factory=PoolSettings)
