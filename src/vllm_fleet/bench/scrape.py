"""The server's side of the story: vLLM's Prometheus ``/metrics``, scraped during the run.

Gauges (queue depth, running requests, KV cache usage) become time series;
counters (tokens, prefix cache hits and queries, preemptions) become deltas
over the measured window. Values are summed over label sets (one engine or
several). A server without ``/metrics`` gives empty series, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vllm_fleet.wire.prometheus import COUNTERS, GAUGES


@dataclass
class ServerSample:
    """One scrape: seconds since the run started and the gauges seen."""

    t_s: float
    waiting: float | None = None
    running: float | None = None
    kv_cache_usage: float | None = None


@dataclass
class ServerMetrics:
    """Gauges over time and counter deltas between the first and the last scrape."""

    samples: list[ServerSample] = field(default_factory=list)
    start: dict[str, float] = field(default_factory=dict)
    end: dict[str, float] = field(default_factory=dict)
    available: bool = False

    def add(self, t_s: float, values: dict[str, float]) -> None:
        self.available = True
        if not self.start:
            self.start = values
        self.end = values
        self.samples.append(
            ServerSample(t_s, *(values.get(GAUGES[k]) for k in ("waiting", "running", "kv_cache_usage")))
        )

    def delta(self, key: str) -> float | None:
        name = COUNTERS[key]
        if name not in self.end:
            return None
        return self.end[name] - self.start.get(name, 0.0)

    def summary(self) -> dict[str, float | None]:
        """What the report shows beside the client metrics (None where the server did not say)."""
        if not self.available:
            return {}
        hits, queries = self.delta("prefix_cache_hits"), self.delta("prefix_cache_queries")

        def series(key: str) -> list[float]:
            return [v for s in self.samples if (v := getattr(s, key)) is not None]

        waiting, running, kv = series("waiting"), series("running"), series("kv_cache_usage")
        return {
            "server_prompt_tokens": self.delta("prompt_tokens"),
            "server_generation_tokens": self.delta("generation_tokens"),
            "server_preemptions": self.delta("preemptions"),
            "server_prefix_cache_hit_rate": (hits / queries) if hits is not None and queries else None,
            "server_mean_waiting": sum(waiting) / len(waiting) if waiting else None,
            "server_max_waiting": max(waiting, default=None),
            "server_mean_running": sum(running) / len(running) if running else None,
            "server_max_kv_cache_usage": max(kv, default=None),
        }
