"""verify: the gate between "the process is up" and "the endpoint works".

Checks, in order: /health is 200; /v1/models lists the served name (vLLM has
no /ready endpoint, so ready means both of these); a chat completion returns
content and usage; the same streamed returns content chunks and usage; then N
completions whose p95 latency must be within the SLO: sent one after another on
an idle server (and said so), or, when the SLO names a rate, sent at that rate by
the bench engine (open loop), which is what the promise means under load.
Measuring code never raises: each check returns a result with its error.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from vllm_fleet.bench.datasets import Prompt, TokenCounter
from vllm_fleet.bench.loadgen import LoadConfig, Runner
from vllm_fleet.bench.metrics import RequestResult, percentile
from vllm_fleet.wire.health import HEALTH_PATH
from vllm_fleet.wire.openai import chat_body, served_models, server_root
from vllm_fleet.wire.sse import iter_events

if TYPE_CHECKING:
    from vllm_fleet.plan import Plan

QUESTION = "What is the capital of France?"
Progress = Callable[[str], None]  # what verify is doing now, for a spinner


def _silent(text: str) -> None:
    return None


@dataclass
class Check:
    """One named check and what it saw."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class VerifyReport:
    """All checks of one endpoint; passed only when every check passed."""

    url: str
    model: str
    checks: list[Check] = field(default_factory=list)
    answer: str = ""
    p95_latency_s: float | None = None

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failed_check(self) -> str | None:
        return next((c.name for c in self.checks if not c.ok), None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"passed": self.passed, "failed_check": self.failed_check}

    def with_check(self, check: Check) -> VerifyReport:
        """This report with ``check`` in place of its namesake (a measurement made elsewhere, e.g. in the cluster)."""
        checks = [check if c.name == check.name else c for c in self.checks]
        return VerifyReport(self.url, self.model, checks, self.answer, self.p95_latency_s)


@dataclass(frozen=True)
class VerifySettings:
    """What verify checks against: the served name (None: the first listed) and the latency promise."""

    model: str | None = None
    requests: int = 20
    slo_p95_s: float = 3.0
    max_tokens: int = 32
    rate: float | None = None  # requests/s of the latency check's load; None: sequential on an idle server

    @classmethod
    def of(cls, plan: Plan) -> VerifySettings:
        """The spec's own promise."""
        slo = plan.spec.slo
        return cls(plan.served_name, slo.requests, slo.p95_latency_s, slo.max_tokens, slo.rate)


async def verify_all(urls: list[str], settings: VerifySettings, progress: Progress | None = None) -> list[VerifyReport]:
    """Verify each endpoint in turn; ``progress`` hears how far the latency check is."""
    return [await verify(url, settings.model, slo_p95_s=settings.slo_p95_s, requests=settings.requests,
                         max_tokens=settings.max_tokens, rate=settings.rate, progress=progress)
            for url in urls]  # fmt: skip


async def verify(
    url: str,
    model: str | None = None,
    *,
    slo_p95_s: float = 3.0,
    requests: int = 20,
    max_tokens: int = 32,
    rate: float | None = None,
    timeout_s: float = 60.0,
    progress: Progress | None = None,
) -> VerifyReport:
    """Run every check against ``url`` (a server root or a /v1 base); stop at the first failure."""
    url = server_root(url)
    async with httpx.AsyncClient(base_url=url, timeout=timeout_s) as client:
        report = VerifyReport(url=url, model=model or "")
        steps = [_health, _models, _chat, _stream, _latency]
        for step in steps:
            check = await _timed(
                step,
                client,
                report,
                slo_p95_s=slo_p95_s,
                requests=requests,
                max_tokens=max_tokens,
                rate=rate,
                progress=progress or _silent,
            )
            report.checks.append(check)
            if not check.ok:
                break
        return report


async def _timed(step, client: httpx.AsyncClient, report: VerifyReport, **opts) -> Check:
    started = time.perf_counter()
    try:
        check = await step(client, report, **opts)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:
        check = Check(step.__name__.lstrip("_"), False, f"{type(exc).__name__}: {exc}")
    check.seconds = round(time.perf_counter() - started, 3)
    return check


async def _health(client: httpx.AsyncClient, report: VerifyReport, **_) -> Check:
    resp = await client.get(HEALTH_PATH)
    return Check("health", resp.status_code == 200, f"GET {HEALTH_PATH} -> {resp.status_code}")


async def _models(client: httpx.AsyncClient, report: VerifyReport, **_) -> Check:
    resp = await client.get("/v1/models")
    resp.raise_for_status()
    served = served_models(resp.json())
    if not report.model:
        report.model = served[0] if served else ""
    ok = report.model in served
    detail = f"serves {served}" + ("; ready = /health 200 and the model listed (vLLM has no /ready)" if ok else "")
    return Check("models", ok, detail if ok else f"{report.model!r} not in {served}")


def _chat_body(report: VerifyReport, max_tokens: int, stream: bool) -> dict[str, Any]:
    return chat_body(report.model, QUESTION, max_tokens=max_tokens, stream=stream)


async def _chat(client: httpx.AsyncClient, report: VerifyReport, *, max_tokens: int, **_) -> Check:
    resp = await client.post("/v1/chat/completions", json=_chat_body(report, max_tokens, stream=False))
    resp.raise_for_status()
    data = resp.json()
    content = data["choices"][0]["message"]["content"] or ""
    tokens = (data.get("usage") or {}).get("completion_tokens", 0)
    report.answer = content.strip()
    ok = bool(content.strip()) and tokens > 0
    return Check(
        "chat", ok, f"{tokens} tokens: {content.strip()[:80]!r}" if ok else f"empty answer or no usage: {data}"
    )


async def _stream(client: httpx.AsyncClient, report: VerifyReport, *, max_tokens: int, **_) -> Check:
    pieces: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", "/v1/chat/completions", json=_chat_body(report, max_tokens, stream=True)) as resp:
        resp.raise_for_status()
        async for payload in iter_events(resp.aiter_bytes()):
            event = json.loads(payload)
            for choice in event.get("choices") or []:
                pieces.append((choice.get("delta") or {}).get("content") or "")
            usage = event.get("usage") or usage
    content = "".join(pieces).strip()
    tokens = usage.get("completion_tokens", 0)
    ok = bool(content) and tokens > 0
    detail = f"{sum(1 for p in pieces if p)} chunks, {tokens} tokens" if ok else "no content or no usage in stream"
    return Check("stream", ok, detail)


async def _latency(
    client: httpx.AsyncClient,
    report: VerifyReport,
    *,
    slo_p95_s: float,
    requests: int,
    max_tokens: int,
    rate: float | None,
    progress: Progress,
    **_,
) -> Check:
    if rate is None:
        latencies = []
        for i in range(requests):
            progress(f"verify {report.url}: latency request {i + 1}/{requests} (sequential)")
            started = time.perf_counter()
            resp = await client.post("/v1/chat/completions", json=_chat_body(report, max_tokens, stream=False))
            resp.raise_for_status()
            latencies.append(time.perf_counter() - started)
        how = f"{requests} requests one after another (sequential, unloaded)"
    else:
        progress(f"verify {report.url}: {requests} requests at {rate:g} req/s")
        results = await _under_load(report, requests, max_tokens, rate)
        if failed := [r for r in results if not r.success]:
            return Check(
                "slo", False, f"{len(failed)} of {requests} requests failed at {rate:g} req/s: {failed[0].error}"
            )
        latencies = [r.e2el_s for r in results]
        how = f"{requests} requests at {rate:g} req/s (open loop, Poisson arrivals)"
    p95 = percentile(sorted(latencies), 95)  # the same definition as `bench` reports
    report.p95_latency_s = round(p95, 3)
    if p95 <= slo_p95_s:
        return Check("slo", True, f"p95 {p95:.3f} s <= SLO {slo_p95_s} s; {how}")
    by = f"by {p95 - slo_p95_s:.3f} s ({p95 / slo_p95_s:.1f}x)"
    return Check("slo", False, f"p95 {p95:.3f} s > SLO {slo_p95_s} s {by}; {how}")


async def _under_load(report: VerifyReport, requests: int, max_tokens: int, rate: float) -> list[RequestResult]:
    """``requests`` streamed chat completions sent at ``rate`` by the bench engine (the promise under load)."""
    config = LoadConfig(
        url=report.url,
        model=report.model,
        endpoint="/v1/chat/completions",
        request_rate=rate,
        num_prompts=requests,
        warmup=0,
        scrape_metrics=False,
    )
    prompts = [Prompt(QUESTION, len(QUESTION.split()), max_tokens)] * requests
    run = await Runner(config, prompts, TokenCounter()).run()
    return run.results
