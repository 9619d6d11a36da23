"""The router's own Prometheus metrics (its /metrics), in a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Added latency is sub-millisecond when all is well: buckets from 50 µs up.
_ADDED_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0)


@dataclass
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "vllm_fleet_router_requests", "Requests answered, by model, backend and status.",
            ["model", "backend", "status"], registry=r,
        )  # fmt: skip
        self.retries = Counter(
            "vllm_fleet_router_retries", "Requests sent again to another backend, by reason.", ["reason"], registry=r
        )
        self.ejections = Counter(
            "vllm_fleet_router_ejections", "Backends ejected after failed requests.", ["backend"], registry=r
        )
        self.in_flight = Gauge("vllm_fleet_router_in_flight", "Requests being proxied now.", registry=r)
        self._answered: dict[tuple[str, str, str], Any] = {}
        self.added = Histogram(
            "vllm_fleet_router_added_latency_seconds",
            "Time the router adds to a request: before it is sent upstream, and from the upstream's first "
            "byte to the client's.",
            buckets=_ADDED_BUCKETS,
            registry=r,
        )

    def answered(self, model: str, backend: str, status: int) -> None:
        """Count one answer (the labelled child is looked up once per label set, not per request)."""
        key = (model, backend, str(status))
        child = self._answered.get(key)
        if child is None:
            child = self._answered[key] = self.requests.labels(*key)
        child.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
