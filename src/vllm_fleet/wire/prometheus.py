"""vLLM's Prometheus metrics: the names it exports and the text exposition they come in.

Values are summed over label sets (one engine or several, one model or several), which is
what every reader here wants: the queue of the server, not of one engine.
"""

from __future__ import annotations

from collections.abc import Collection

WAITING = "vllm:num_requests_waiting"
RUNNING = "vllm:num_requests_running"
KV_CACHE_USAGE = "vllm:kv_cache_usage_perc"
GAUGES = {"waiting": WAITING, "running": RUNNING, "kv_cache_usage": KV_CACHE_USAGE}
COUNTERS = {
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prefix_cache_hits": "vllm:prefix_cache_hits_total",
    "prefix_cache_queries": "vllm:prefix_cache_queries_total",
    "preemptions": "vllm:num_preemptions_total",
}
KNOWN = frozenset({*GAUGES.values(), *COUNTERS.values()})


def parse_prometheus(text: str, names: Collection[str] = KNOWN) -> dict[str, float]:
    """The families ``names`` of a Prometheus text exposition, each summed over its label sets.

    Comments, other families and unreadable values are skipped: a scrape never raises.
    """
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_end = min((i for i in (line.find("{"), line.find(" ")) if i > 0), default=-1)
        name = line[:name_end]
        if name not in names:
            continue
        try:
            rest = line.rsplit("}", 1)[-1] if line[name_end] == "{" else line[name_end:]
            value = float(rest.split()[0])
        except (ValueError, IndexError):
            continue
        values[name] = values.get(name, 0.0) + value
    return values


def in_flight(text: str) -> float:
    """Requests the server holds: running plus waiting, over every label set."""
    values = parse_prometheus(text, (RUNNING, WAITING))
    return values.get(RUNNING, 0.0) + values.get(WAITING, 0.0)
