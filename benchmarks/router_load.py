"""bench_router.py's load: the project's load generator (vllm_fleet.bench.loadgen) on generated requests.

Streamed requests go through ``loadgen.Runner`` unchanged (TTFT to the first content
token, E2E to the end of the stream, timed from when the request's bytes hit the socket).
Non-streamed ones go through :class:`PlainRunner`, the same Runner with ``"stream": false``
bodies (generated, 128 B to 16 KB, log-uniform) whose answer is one JSON document: a 200
with its whole body read is a success, and E2E is the latency that counts.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field

from vllm_fleet.bench import metrics
from vllm_fleet.bench.datasets import WORDS, Prompt, TokenCounter
from vllm_fleet.bench.loadgen import LoadConfig, Runner, RunResult
from vllm_fleet.bench.metrics import RequestResult
from vllm_fleet.loop import run_loop

MODEL = "yardstick"
WARMUP = 64  # keep-alive connections opened before a run: enough that a burst never pays a TCP connect


def plain_bodies(count: int, seed: int = 0, min_bytes: int = 128, max_bytes: int = 16 * 1024) -> list[bytes]:
    """Non-streamed completion requests whose JSON bodies are ``min_bytes``..``max_bytes`` (log-uniform)."""
    rng = random.Random(seed)
    bodies = []
    for i in range(count):
        size = int(math.exp(rng.uniform(math.log(min_bytes), math.log(max_bytes))))
        shell = {"model": MODEL, "prompt": "", "max_tokens": 16, "temperature": 0.0, "user": f"u{i}"}
        room = max(0, size - len(json.dumps(shell)))
        words: list[str] = []
        used = 0
        while used < room:
            word = rng.choice(WORDS)
            words.append(word)
            used += len(word) + 1
        shell["prompt"] = f"request {i}: " + " ".join(words)
        bodies.append(json.dumps(shell).encode())
    return bodies


class PlainRunner(Runner):
    """``loadgen.Runner`` sending prepared non-streamed bodies; success is a 200 with its body read whole."""

    def __init__(self, config: LoadConfig, bodies: list[bytes]):
        super().__init__(config, [Prompt("", 0, 16)] * len(bodies), TokenCounter())
        warm = [json.dumps({"model": MODEL, "prompt": f"warm-up {i}", "max_tokens": 16}).encode()
                for i in range(config.warmup)]  # fmt: skip
        # The Runner builds streamed bodies; these replace them (its send path and timing are unchanged).
        self._bodies = bodies + warm
        self._heads = [[c.head("POST", config.endpoint, b) for b in self._bodies] for c in self._clients]

    def _complete(self, result: RequestResult, prompt: Prompt, sent: float, chunks: list, usage: dict) -> None:
        result.success = True  # the status was 200 and E2E is set: the whole JSON answer arrived


@dataclass
class Load:
    """One run's samples, in milliseconds, and its outcome."""

    results: list[RequestResult]
    duration_s: float
    stopped_early: str = ""
    e2e_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        ok = [r for r in self.results if r.success and not r.warmup]
        self.e2e_ms = sorted(r.e2el_s * 1000 for r in ok)
        self.ttft_ms = sorted(r.ttft_s * 1000 for r in ok)

    @property
    def ok(self) -> int:
        return len(self.e2e_ms)

    @property
    def failed(self) -> list[RequestResult]:
        return [r for r in self.results if not r.success and not r.warmup]

    def errors(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for r in self.failed:
            kinds[r.error_kind or "unknown"] = kinds.get(r.error_kind or "unknown", 0) + 1
        return kinds


def pct(samples: list[float], q: float) -> float:
    return metrics.percentile(samples, q) if samples else math.nan


def config(url: str, model: str = MODEL, **kw) -> LoadConfig:
    kw.setdefault("warmup", WARMUP)
    kw.setdefault("timeout_s", 30.0)
    return LoadConfig(url=url, model=model, scrape_metrics=False, **kw)


def plain(
    url: str, bodies: list[bytes], rate: float, count: int, seed: int = 0, concurrency: int | None = None, **kw
) -> Load:
    """Non-streamed ``bodies`` to ``url``: open loop at ``rate`` (Poisson), or closed loop with ``concurrency``;
    ``kw``: more LoadConfig (an ``api_key``)."""
    cfg = config(url, request_rate=rate, num_prompts=count, seed=seed, max_concurrency=concurrency, **kw)
    run: RunResult = run_loop(PlainRunner(cfg, bodies).run())
    return Load(run.results, run.duration_s, run.stopped_early)


def streamed(
    url: str,
    prompts: list[Prompt],
    rate: float,
    count: int,
    seed: int = 0,
    concurrency: int | None = None,
    **kw,
) -> Load:
    """Streamed completions of ``prompts`` (their output_len tokens each) to ``url``; ``kw``: more LoadConfig."""
    cfg = config(url, request_rate=rate, num_prompts=count, seed=seed, max_concurrency=concurrency, **kw)
    run = run_loop(Runner(cfg, prompts, TokenCounter()).run())
    return Load(run.results, run.duration_s, run.stopped_early)


def stream_prompts(count: int, output_len: int) -> list[Prompt]:
    return [Prompt(f"stream {i}: " + " ".join(WORDS[(i + k) % len(WORDS)] for k in range(32)), 34, output_len)
            for i in range(count)]  # fmt: skip
