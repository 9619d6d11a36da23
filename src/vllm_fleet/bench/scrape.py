"""The server's side of the story: vLLM's Prometheus ``/metrics``, scraped during the run.

Gauges (queue depth, running requests, KV cache usage) become time series;
counters (tokens, prefix cache hits and queries, preemptions) become deltas
over the measured window. Values are summed over label sets (one engine or
several). A server without ``/metrics`` gives empty series, never an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GAUGES = {
    "waiting": "vllm:num_requests_waiting",
    "running": "vllm:num_requests_running",
    "kv_cache_usage": "vllm:kv_cache_usage_perc",
}
COUNTERS = {
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prefix_cache_hits": "vllm:prefix_cache_hits_total",
    "prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "preemptions": "vllm:num_preemptions_total",
}
_WANTED = {*GAUGES.values(), *COUNTERS.values()}


def parse_prometheus(text: str) -> dict[str, float]:
    """Wanted metric families of a Prometheus text exposition, summed over their label sets."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        name = line[:name_end]
        if name not in _WANTED:
            continue
        try:
            rest = line.rsplit("}", 1)[-1] if line[name_end] == "{" else line[name_end:]
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        values[name] = values.get(name, 0.0) + value
    return values


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
