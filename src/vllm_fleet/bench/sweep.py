"""Several runs: a sweep over rates, the search for the highest rate within the SLO, the HPA target."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from vllm_fleet.bench import workers
from vllm_fleet.bench.datasets import Prompt, TokenCounter
from vllm_fleet.bench.loadgen import LoadConfig, RunResult
from vllm_fleet.bench.metrics import SLO, RequestResult, summarize

SEARCH_DOUBLINGS = 8


@dataclass
class Point:
    """One run's summary (vLLM keys, server metrics beside them) and the run itself."""

    run: RunResult
    summary: dict[str, Any]

    @property
    def rate(self) -> float:
        return self.run.request_rate

    def passed(self, slo: SLO | None) -> bool:
        return not self.run.stopped_early and (slo is None or bool(self.summary.get("slo_met")))


@dataclass
class BenchReport:
    """Every point measured, in rate order, and what they say together."""

    url: str
    model: str
    settings: dict[str, Any]
    points: list[Point] = field(default_factory=list)
    slo: SLO | None = None
    best_rate: float | None = None
    hpa_target: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``--json``: one run gives its summary at the top level (vLLM's layout), a sweep lists them."""
        points = [p.summary for p in self.points]
        head = {"url": self.url, "model": self.model, "settings": self.settings}
        if len(points) == 1 and self.best_rate is None and self.hpa_target is None:
            return head | points[0]
        return head | {"runs": points, "best_rate_within_slo": self.best_rate, "recommend_hpa": self.hpa_target}


async def measure(
    config: LoadConfig, prompts: list[Prompt], counter: TokenCounter, slo: SLO | None, progress=None
) -> Point:
    """Run once and summarize."""
    run = await workers.run(config, prompts, counter, progress)
    summary = summarize(run.results, run.duration_s, slo)
    summary |= {
        "request_rate": config.request_rate if math.isfinite(config.request_rate) else "inf",  # as vLLM writes it
        "burstiness": config.burstiness,
        "max_concurrency": config.max_concurrency,
        "achieved_request_rate": _rate_of(r.sent_s for r in _sent(run)),
        "scheduled_request_rate": _rate_of(r.scheduled_s for r in _sent(run)),
        "stopped_early": run.stopped_early,
    }
    return Point(run, summary | run.server.summary())


async def sweep(
    config: LoadConfig,
    prompts: list[Prompt],
    counter: TokenCounter,
    rates: list[float],
    slo: SLO | None,
    search: bool,
    on_point: Callable[[Point], None] | None = None,
    progress=None,
) -> list[Point]:
    """Measure each of ``rates``; with ``search``, keep doubling then bisect to the highest rate within ``slo``."""
    points: list[Point] = []

    async def at(rate: float) -> Point:
        point = await measure(dataclasses.replace(config, request_rate=rate), prompts, counter, slo, progress)
        points.append(point)
        if on_point:
            on_point(point)
        return point

    for rate in rates:
        await at(rate)
    if search and slo is not None:
        await _search(at, points, slo, steps=4)
    return sorted(points, key=lambda p: p.rate)


async def _search(at: Callable[[float], Awaitable[Point]], points: list[Point], slo: SLO, steps: int) -> None:
    passing = [p.rate for p in points if p.passed(slo) and math.isfinite(p.rate)]
    failing = [p.rate for p in points if not p.passed(slo) and math.isfinite(p.rate)]
    low = max(passing, default=0.0)
    high = min((r for r in failing if r > low), default=None)
    for _ in range(SEARCH_DOUBLINGS):
        if high is not None:
            break
        rate = low * 2 if low else 1.0
        if (await at(rate)).passed(slo):
            low = rate
        else:
            high = rate
    if high is None:
        return
    for _ in range(steps):
        rate = round((low + high) / 2, 3)
        if (await at(rate)).passed(slo):
            low = rate
        else:
            high = rate


def best_rate(points: list[Point], slo: SLO | None) -> float | None:
    """The highest measured rate that met the SLO and did not saturate."""
    return max((p.rate for p in points if p.passed(slo) and math.isfinite(p.rate)), default=None)


# scaling.metric -> (the series the HPA reads, the server summary that measures it during the run).
HPA_METRICS = {
    "waiting": ("vllm:num_requests_waiting", "server_mean_waiting"),
    "running": ("vllm:num_requests_running", "server_mean_running"),
    "gpu-utilization": ("DCGM_FI_DEV_GPU_UTIL", None),
}


def recommend_hpa(points: list[Point], slo: SLO | None, metric: str = "waiting") -> dict[str, Any]:
    """The autoscaling target for ``metric`` (scaling.metric): its mean at the SLO knee (the highest
    passing rate), the value to set as scaling.target."""
    series, key = HPA_METRICS[metric]
    out: dict[str, Any] = {"metric": series, "scaling_metric": metric, "target": None}
    if key is None:
        return out | {"why": "GPU utilisation is not in vLLM's /metrics: read DCGM_FI_DEV_GPU_UTIL at the "
                      "highest rate that met the SLO from your Prometheus, and set scaling.target to it"}  # fmt: skip
    knee = best_rate(points, slo)
    point = next((p for p in points if p.rate == knee), None)
    if point is None:
        return out | {"why": "no measured rate met the SLO"}
    value = point.summary.get(key)
    if value is None:
        return out | {"why": "the server exposes no /metrics"}
    name = series.removeprefix("vllm:").replace("_", " ")
    return out | {
        "target": max(1, math.ceil(value)),
        "why": f"mean {name} {value:.2f} at {knee:g} req/s, the highest rate that met the SLO",
    }


def _sent(run: RunResult) -> list[RequestResult]:
    return [r for r in run.results if not r.warmup and (r.e2el_s or r.error_kind)]


def _rate_of(times: Iterable[float]) -> float:
    """Events per second over the window they span (a Poisson schedule's drawn rate differs from the asked one)."""
    ordered = sorted(times)
    if len(ordered) < 2 or ordered[-1] <= ordered[0]:
        return 0.0
    return (len(ordered) - 1) / (ordered[-1] - ordered[0])
