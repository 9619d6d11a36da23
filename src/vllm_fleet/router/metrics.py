"""The router's own Prometheus metrics (its /metrics), in a registry of its own.

The ones counted on every request (answers by model, backend and status; the added latency; an API
key's requests and tokens) are plain numbers read at scrape time by a collector, not prometheus_client's
metric objects: those take a lock per increment and walk the buckets in Python, about a twentieth of the
router's CPU per request (benchmarks/bench_router.py). One event loop updates and reads them, so no lock
is needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

# Added latency is sub-millisecond when all is well: buckets from 50 µs up.
_ADDED_BUCKETS = (0.00005, 0.0001, 0.0002, 0.0003, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0)
_ADDED_LE = (*map(str, _ADDED_BUCKETS), "+Inf")  # the buckets' `le` labels


@dataclass(eq=False)  # hashable: the registry keeps it as a collector
class RouterMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.retries = Counter(
            "vllm_fleet_router_retries", "Requests sent again to another backend, by reason.", ["reason"], registry=r
        )
        self.ejections = Counter(
            "vllm_fleet_router_ejections", "Backends ejected after failed requests.", ["backend"], registry=r
        )
        self.in_flight = Gauge("vllm_fleet_router_in_flight", "Requests being proxied now.", registry=r)
        self._answers: Tally[tuple[str, str, str]] = Tally()
        self._added = [0] * (len(_ADDED_BUCKETS) + 1)  # per bucket (not cumulative), the last one +Inf
        self._added_sum = 0.0
        self._key_requests: Tally[tuple[str, str]] = Tally()  # (key name, admitted | refused): the registry's keys
        self._key_tokens: Tally[str] = Tally()
        r.register(self)

    def answered(self, model: str, backend: str, status: int) -> None:
        """Count one answer."""
        self._answers[model, backend, str(status)] += 1

    def added(self, seconds: float) -> None:
        """Observe the time the router added to one request."""
        self._added[bisect_left(_ADDED_BUCKETS, seconds)] += 1
        self._added_sum += seconds

    def key_used(self, name: str, tokens: int, requests: int = 1) -> None:
        """Count ``requests`` of API key ``name`` that were answered, and the tokens they used."""
        self._key_requests[name, "admitted"] += requests
        self._key_tokens[name] += tokens

    def key_refused(self, name: str) -> None:
        """Count one request of API key ``name`` refused over its limits (a 429)."""
        self._key_requests[name, "refused"] += 1

    def collect(self) -> Iterator[Metric]:
        """The per-request counts, as the registry's collector."""
        answers = CounterMetricFamily(
            "vllm_fleet_router_requests", "Requests answered, by model, backend and status.",
            labels=["model", "backend", "status"],
        )  # fmt: skip
        for labels, count in self._answers.items():
            answers.add_metric(labels, count)
        yield answers
        added = HistogramMetricFamily(
            "vllm_fleet_router_added_latency_seconds",
            "Time the router adds to a request: before it is sent upstream, and from the upstream's first "
            "byte to the client's.",
        )
        cumulative, buckets = 0, []
        for bound, count in zip(_ADDED_LE, self._added, strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        added.add_metric([], buckets, self._added_sum)
        yield added
        requests = CounterMetricFamily(
            "vllm_fleet_router_key_requests", "Requests of each API key, admitted or refused over its limits.",
            labels=["key", "outcome"],
        )  # fmt: skip
        for (name, outcome), count in self._key_requests.items():
            requests.add_metric([name, outcome], count)
        yield requests
        tokens = CounterMetricFamily(
            "vllm_fleet_router_key_tokens",
            "Tokens used by each API key's requests: as their answers' usage says, else as estimated.",
            labels=["key"],
        )
        for name, count in self._key_tokens.items():
            tokens.add_metric([name], count)
        yield tokens

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
