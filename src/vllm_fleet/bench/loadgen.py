"""The load generator: send prompts on a schedule, stream the answers, time every token.

Two load models:
- open loop (``request_rate`` finite): send times are drawn ahead of the run
  from a gamma process (burstiness 1 = Poisson) and kept absolute, so a slow
  moment never shifts later sends; an optional concurrency cap makes requests
  wait in the client, and that wait is reported apart from latency.
- fixed concurrency (rate infinite with ``max_concurrency``): N workers, each
  sending its next request when the previous one ends.
Bounds: a request count and/or a duration. Warm-up requests run first, all at
once (each leaves a keep-alive connection open for the run), and are not
measured. A request counts as sent when its bytes are written to the socket;
TTFT and E2E count from the call, the client's send path included (HTTP goes
through :mod:`vllm_fleet.wire.http1`, whose send is one socket write). An
open-loop run stops early when its backlog grows without bound (the server is
saturated) and says so.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from vllm_fleet.bench.datasets import Prompt, TokenCounter
from vllm_fleet.bench.metrics import RequestResult
from vllm_fleet.bench.scrape import ServerMetrics
from vllm_fleet.wire import http1
from vllm_fleet.wire.prometheus import KV_CACHE_USAGE, parse_prometheus
from vllm_fleet.wire.sse import DONE, SSEDecoder

_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
# Saturation: the backlog (sent, not finished) rose at each of the last N checks and doubled.
_SATURATION_CHECKS = 5
_SATURATION_FLOOR = 32
# The event loop's timers have millisecond resolution; the last stretch before a send yields instead.
_SPIN_S = 0.0015
_SETTLE_S = 0.3


@dataclass
class LoadConfig:
    """How to load one endpoint."""

    url: str
    model: str
    endpoint: str = "/v1/completions"
    request_rate: float = math.inf
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_prompts: int | None = 100
    duration_s: float | None = None
    warmup: int = 1
    ignore_eos: bool = False
    seed: int = 0
    timeout_s: float = 600.0
    scrape_interval_s: float = 1.0
    scrape_metrics: bool = True
    workers: int = 1
    api_key: str | None = field(default=None, repr=False)
    replicas: tuple[str, ...] = ()  # more servers of the same model: requests go round-robin over url and these
    metrics_from: tuple[str, ...] = ()  # the engines whose /metrics to read, when not the servers loaded (a router)

    @property
    def closed_loop(self) -> bool:
        return math.isinf(self.request_rate) and self.max_concurrency is not None


@dataclass
class RunResult:
    """One run: raw per-request results, its measured duration, the server's metrics, why it stopped."""

    request_rate: float
    results: list[RequestResult]
    duration_s: float
    server: ServerMetrics
    stopped_early: str = ""


def send_times(config: LoadConfig, count: int | None) -> list[float]:
    """Send offsets in seconds, computed ahead: gamma(shape=burstiness) gaps with mean 1/rate."""
    if math.isinf(config.request_rate):
        return [0.0] * (count or 0)
    rng = random.Random(config.seed)
    theta = 1.0 / (config.request_rate * config.burstiness)
    times: list[float] = []
    at = 0.0
    while (count is None or len(times) < count) and (config.duration_s is None or at < config.duration_s):
        times.append(at)
        at += rng.gammavariate(config.burstiness, theta)
    return times


def request_body(config: LoadConfig, prompt: Prompt) -> bytes:
    """The streamed OpenAI request for ``prompt`` (chat when the endpoint is chat), usage included."""
    body: dict = {
        "model": config.model,
        "max_tokens": prompt.output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if config.endpoint.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = prompt.text
    if config.ignore_eos:
        body |= {"ignore_eos": True, "min_tokens": prompt.output_len}
    return json.dumps(body).encode()


class Runner:
    """One run against one endpoint; :meth:`run` never raises for a request's failure."""

    def __init__(
        self,
        config: LoadConfig,
        prompts: list[Prompt],
        counter: TokenCounter,
        on_progress: Callable[[int, int | None, float], None] | None = None,
        before_start: Callable[[], object] | None = None,
    ):
        self.config = config
        self.before_start = before_start
        # Warm-up prompts of their own: reusing a measured one would hand it a prefix-cache hit.
        warm = [Prompt(f"Warm-up request {i}.", 4, prompts[0].output_len) for i in range(config.warmup)]
        self.measured_prompts = len(prompts)
        self.prompts = prompts + warm
        self.counter = counter
        self.on_progress = on_progress
        self.results: list[RequestResult] = []
        self.finished = 0
        self.server = ServerMetrics()
        self.stopped_early = ""
        self._stop = asyncio.Event()
        self._t0 = 0.0
        self._bodies = [request_body(config, p) for p in self.prompts]
        headers = dict(_HEADERS) | ({"Authorization": f"Bearer {config.api_key}"} if config.api_key else {})
        # One client (its own keep-alive pool) per server; a request's bytes carry its server's Host header.
        self._clients = [http1.Client(url, headers) for url in (config.url, *config.replicas)]
        self._heads = [[c.head("POST", config.endpoint, body) for body in self._bodies] for c in self._clients]
        self._scraped = [http1.Client(url, headers) for url in config.metrics_from] or self._clients

    async def run(self) -> RunResult:
        """Warm up, run, scrape, return the raw results."""
        config = self.config
        try:
            # All at once: each leaves a keep-alive connection open, so the run does not pay for TCP connects.
            warm = [RequestResult(index=-1 - i, scheduled_s=0.0, warmup=True) for i in range(config.warmup)]
            await asyncio.gather(*(self._one(w, self.measured_prompts + i) for i, w in enumerate(warm)))
            if self.before_start is not None:  # e.g. every worker process warmed up: start together
                await asyncio.to_thread(self.before_start)
            # What exists now lives through the run: keep the collector's full passes (ms pauses) off it.
            gc.freeze()
            self.finished = 0
            self._t0 = time.perf_counter()
            await self._scrape()
            watcher = asyncio.create_task(self._watch())
            try:
                if config.closed_loop:
                    await self._fixed_concurrency()
                else:
                    await self._open_loop()
            finally:
                gc.unfreeze()
                watcher.cancel()
            duration = time.perf_counter() - self._t0
            # vLLM counts a request's tokens just after it streams the last chunk: let the counters settle.
            await asyncio.sleep(_SETTLE_S)
            await self._scrape()
        finally:
            for client in self._clients:
                client.close()
        return RunResult(config.request_rate, self.results, duration, self.server, self.stopped_early)

    async def _open_loop(self) -> None:
        config = self.config
        times = send_times(config, config.num_prompts)
        slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        tasks = []
        for index, at in enumerate(times):
            await sleep_until(self._t0 + at)
            if self._stop.is_set():
                break
            result = RequestResult(index=index, scheduled_s=at)
            self.results.append(result)
            prompt = index % self.measured_prompts
            # Uncapped, the scheduler writes the request itself on an idle connection: a task's first step
            # comes one loop pass after its creation, and that pass (every ready callback) was the send lag.
            sent = self._send_now(result, prompt) if slots is None else None
            tasks.append(asyncio.create_task(self._slotted(result, prompt, slots, sent)))
        if self._stop.is_set():
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _slotted(
        self, result: RequestResult, prompt: int, slots: asyncio.Semaphore | None, sent: _Sent | None
    ) -> None:
        try:
            if slots is None:
                await self._one(result, prompt, sent)
                return
            async with slots:
                await self._one(result, prompt)
        except asyncio.CancelledError:
            result.error_kind, result.error = "cancelled at early stop", self.stopped_early
            raise

    async def _fixed_concurrency(self) -> None:
        config = self.config
        limit = config.num_prompts if config.num_prompts is not None else math.inf
        deadline = self._t0 + config.duration_s if config.duration_s else math.inf

        async def worker() -> None:
            while len(self.results) < limit and time.perf_counter() < deadline:
                index = len(self.results)
                result = RequestResult(index=index, scheduled_s=time.perf_counter() - self._t0)
                self.results.append(result)
                await self._one(result, index % self.measured_prompts)

        await asyncio.gather(*(worker() for _ in range(config.max_concurrency or 1)))

    def _send_now(self, result: RequestResult, prompt_index: int) -> _Sent | None:
        called = time.perf_counter()
        server = result.index % len(self._clients)
        response = self._clients[server].send_now(
            "POST", self.config.endpoint, self._bodies[prompt_index], self._heads[server][prompt_index]
        )
        return None if response is None else _Sent(called, response)

    async def _one(self, result: RequestResult, prompt_index: int, sent: _Sent | None = None) -> None:
        """Send one request (unless ``sent`` already) and fill ``result``; every failure becomes an error kind."""
        prompt = self.prompts[prompt_index]
        chunks: list[tuple[float, str]] = []
        usage: dict = {}
        # TTFT and E2E count from the call, the client's own send path included.
        called = sent.called if sent else time.perf_counter()
        result.sent_s = called - self._t0  # until the response says when its request's bytes left
        response: http1.Response | None = None  # released here once ready; ready() releases on failure
        server = result.index % len(self._clients)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await (
                    sent.response.ready()
                    if sent
                    else self._clients[server].request(
                        "POST", self.config.endpoint, self._bodies[prompt_index], self._heads[server][prompt_index]
                    )
                )
                result.sent_s = response.sent_at - self._t0
                if response.status != 200:
                    result.error_kind = f"http {response.status}"
                    result.error = (await response.read()).decode(errors="replace")[:200]
                    return
                decoder = SSEDecoder()
                async for data in response.chunks():
                    now = time.perf_counter()
                    for payload in decoder.feed(data):
                        if payload != DONE:
                            usage = _take_event(json.loads(payload), now, chunks) or usage
            result.e2el_s = time.perf_counter() - called
        except TimeoutError:
            result.error_kind, result.error = "timeout", f"no complete answer in {self.config.timeout_s} s"
            return
        except OSError as exc:
            result.error_kind, result.error = f"connection: {type(exc).__name__}", str(exc)[:200]
            return
        except StreamError as exc:
            result.error_kind, result.error = "error in stream", str(exc)[:200]
            return
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            result.error_kind, result.error = "malformed stream", f"{type(exc).__name__}: {exc}"[:200]
            return
        finally:
            self.finished += 1
            if response is not None:
                response.release()
        self._complete(result, prompt, called, chunks, usage)

    def _complete(
        self, result: RequestResult, prompt: Prompt, sent: float, chunks: list[tuple[float, str]], usage: dict
    ) -> None:
        if not chunks:
            result.error_kind, result.error = "empty answer", "the stream carried no content"
            return
        result.ttft_s = chunks[0][0] - sent
        if usage.get("completion_tokens") is not None:
            result.output_tokens = int(usage["completion_tokens"])
            result.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        else:
            result.token_source = self.counter.source
            result.output_tokens = self.counter.count("".join(text for _, text in chunks))
            result.prompt_tokens = prompt.prompt_len
        result.itl_s = split_gaps(chunks, result.output_tokens)
        result.success = True

    async def _watch(self) -> None:
        """Every scrape interval: read /metrics, report progress, stop an open loop the server cannot keep up with."""
        backlog: list[int] = []
        while True:
            await asyncio.sleep(self.config.scrape_interval_s)
            await self._scrape()
            elapsed = time.perf_counter() - self._t0
            if self.on_progress:
                self.on_progress(self.finished, self.config.num_prompts, elapsed)
            backlog.append(len(self.results) - self.finished)
            if not self.config.closed_loop and _saturated(backlog):
                rate = self.config.request_rate
                self.stopped_early = (
                    f"stopped early: the server is saturated at {rate:g} req/s: requests in flight grew from "
                    f"{backlog[-_SATURATION_CHECKS - 1]} to {backlog[-1]} in {_SATURATION_CHECKS} checks "
                    "and kept growing"
                )
                self._stop.set()
                return

    async def _scrape(self) -> None:
        """One sample of every server's /metrics, merged: queues and counters add up, KV cache usage is the fullest."""
        if not self.config.scrape_metrics:
            return
        seen = [v for v in await asyncio.gather(*(self._scrape_one(c) for c in self._scraped)) if v is not None]
        if not seen:
            return
        merged: dict[str, float] = {}
        for values in seen:
            for name, value in values.items():
                merged[name] = (
                    max(merged.get(name, value), value) if name == KV_CACHE_USAGE else merged.get(name, 0) + value
                )
        self.server.add(time.perf_counter() - self._t0, merged)

    async def _scrape_one(self, client: http1.Client) -> dict[str, float] | None:
        try:
            async with asyncio.timeout(self.config.timeout_s):
                response = await client.request("GET", "/metrics")
                try:
                    if response.status == 200:
                        return parse_prometheus((await response.read()).decode())
                finally:
                    response.release()
        except (OSError, TimeoutError, ValueError):
            return None
        return None


class _Sent(NamedTuple):
    """A request the scheduler wrote itself: when it was called, and its response to come."""

    called: float
    response: http1.Response


class StreamError(Exception):
    """The server reported an error inside the stream."""


def _take_event(event: dict, now: float, chunks: list[tuple[float, str]]) -> dict | None:
    """Record the content of one streamed event; return its usage if it carries one."""
    if "error" in event:
        raise StreamError(str(event["error"]))
    for choice in event.get("choices") or ():
        text = choice.get("text")
        if text is None:
            text = (choice.get("delta") or {}).get("content")
        if text:
            chunks.append((now, text))
    return event.get("usage")


def split_gaps(chunks: list[tuple[float, str]], output_tokens: int) -> list[float]:
    """ITL samples: a chunk carrying k tokens gives k gaps of gap/k.

    Tokens per chunk: one each when the counts agree (vLLM streams a token per
    chunk); otherwise the output tokens are shared out in proportion to each
    chunk's characters (the stream does not say, so this is the best estimate).
    """
    gaps: list[float] = []
    later = chunks[1:]
    if output_tokens <= len(chunks):
        shares = [1] * len(later)
    else:
        chars = sum(len(text) for _, text in chunks) or 1
        shares = [max(1, round(output_tokens * len(text) / chars)) for _, text in later]
    for (previous, _), (now, _), share in zip(chunks, later, shares, strict=False):
        gaps.extend([(now - previous) / share] * share)
    return gaps


async def sleep_until(deadline: float) -> None:
    """Sleep to ``deadline`` (perf_counter): the loop's timer wakes up to 1 ms late, so the last ms yields."""
    delay = deadline - time.perf_counter()
    if delay > _SPIN_S:
        await asyncio.sleep(delay - _SPIN_S)
    while time.perf_counter() < deadline:
        await asyncio.sleep(0)


def _saturated(backlog: list[int]) -> bool:
    if len(backlog) <= _SATURATION_CHECKS:
        return False
    window = backlog[-_SATURATION_CHECKS - 1 :]
    rising = all(b > a for a, b in itertools.pairwise(window))
    return rising and window[-1] >= max(2 * window[0], _SATURATION_FLOOR)
