"""One run of the load generator: in this event loop, or in several client processes for rates one
process cannot drive (each sends a share, raw samples are merged).

Shares split the rate, the request count and the concurrency cap; each
process draws its own arrival times (a sum of independent Poisson processes
is a Poisson process of the summed rate). Every process warms up, then they
start together at a barrier. Only the first scrapes /metrics. Results are
merged as raw per-request samples, so percentiles are computed once over all
of them (never an average of per-process percentiles).
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import queue
from collections.abc import Callable

from vllm_fleet.bench.datasets import Prompt, TokenCounter
from vllm_fleet.bench.loadgen import LoadConfig, Runner, RunResult
from vllm_fleet.bench.metrics import RequestResult
from vllm_fleet.bench.scrape import ServerMetrics
from vllm_fleet.loop import run_loop


async def run(
    config: LoadConfig,
    prompts: list[Prompt],
    counter: TokenCounter,
    on_progress: Callable[[int, int | None, float], None] | None = None,
) -> RunResult:
    """Run once: in this loop, or in ``config.workers`` processes when > 1 (waited for off the loop)."""
    if config.workers > 1:
        return await asyncio.to_thread(run_parallel, config, prompts, counter, config.workers)
    return await Runner(config, prompts, counter, on_progress).run()


def share(config: LoadConfig, index: int, workers: int) -> LoadConfig:
    """Process ``index``'s part of ``config``."""

    def part(total: int | None) -> int | None:
        return None if total is None else max(1, total // workers + (index < total % workers))

    return dataclasses.replace(
        config,
        request_rate=config.request_rate / workers,
        num_prompts=part(config.num_prompts),
        max_concurrency=part(config.max_concurrency),
        seed=config.seed + index,
        scrape_metrics=config.scrape_metrics and index == 0,
        workers=1,
    )


def _worker(config: LoadConfig, prompts: list[Prompt], counter: TokenCounter, barrier, results) -> None:
    results.put(run_loop(Runner(config, prompts, counter, before_start=barrier.wait).run()))


def run_parallel(config: LoadConfig, prompts: list[Prompt], counter: TokenCounter, workers: int) -> RunResult:
    """Run ``workers`` processes and merge their raw results into one RunResult."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(
            target=_worker,
            args=(share(config, i, workers), prompts[i::workers] or prompts, counter, barrier, results),
            daemon=True,
        )
        for i in range(workers)
    ]
    for process in processes:
        process.start()
    runs: list[RunResult] = []
    wait_s = config.timeout_s + (config.duration_s or 0) + 120
    try:
        runs = [results.get(timeout=wait_s) for _ in processes]
    except queue.Empty:
        barrier.abort()
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
    return merge(config, runs, workers)


def merge(config: LoadConfig, runs: list[RunResult], workers: int) -> RunResult:
    """One RunResult from the workers' runs: samples concatenated and renumbered, the first one's server view."""
    merged: list[RequestResult] = []
    for run in runs:
        merged.extend(r for r in run.results if not r.warmup)
    merged.sort(key=lambda r: r.scheduled_s)
    for number, result in enumerate(merged):
        result.index = number
    stopped = next((run.stopped_early for run in runs if run.stopped_early), "")
    if len(runs) < workers:
        stopped = stopped or f"only {len(runs)} of {workers} client processes reported"
    first = next((run for run in runs if run.server.available), runs[0] if runs else None)
    duration = max((run.duration_s for run in runs), default=0.0)
    return RunResult(config.request_rate, merged, duration, first.server if first else ServerMetrics(), stopped)
