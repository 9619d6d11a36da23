"""`bench` of a URL or a spec: the endpoints from the target, the model and tokenizer from the spec, then the sweep."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from vllm_fleet.bench import datasets, loadgen, metrics, sweep
from vllm_fleet.errors import CheckFailed, SpecError
from vllm_fleet.ops.endpoints import open_endpoints
from vllm_fleet.plan import Plan
from vllm_fleet.targets.base import TargetOptions
from vllm_fleet.wire.health import ensure_listening
from vllm_fleet.wire.openai import served_models


@dataclass(frozen=True)
class BenchOptions:
    """Everything `vllm-fleet bench` takes besides the target (named as `vllm bench serve` names them)."""

    model: str | None = None
    endpoint: str = "/v1/completions"
    rates: tuple[float, ...] = (math.inf,)
    burstiness: float = 1.0
    max_concurrency: int | None = None
    num_prompts: int | None = None
    duration_s: float | None = None
    warmup: int = 1
    dataset_name: str = "random"
    dataset_path: Path | None = None
    input_len: int = 128
    output_len: int = 32
    prefix_groups: int = 4
    prefix_len: int = 512
    ignore_eos: bool = False
    tokenizer: Path | None = None
    slo: str | None = None
    search: bool = False
    recommend_hpa: bool = False
    hpa_metric: str | None = None  # scaling.metric to recommend for (default: the spec's, else waiting)
    seed: int = 0
    workers: int = 1


def parse_rates(text: str) -> tuple[float, ...]:
    """'4', 'inf' or '1,2,4' as rates; a SpecError names the option otherwise."""
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise SpecError(f"--request-rate {text!r} is not a number or a list", fix="e.g. 4, inf or 1,2,4,8") from exc
    if not rates or any(r <= 0 for r in rates):
        raise SpecError(f"--request-rate {text!r} must be positive", fix="e.g. 4, inf or 1,2,4,8")
    return rates


async def run_bench(
    where: str,
    env: str | None,
    opts: BenchOptions,
    on_point: Callable[[sweep.Point], None] | None = None,
    on_progress: Callable[[int, int | None, float], None] | None = None,
    options: TargetOptions | None = None,
) -> sweep.BenchReport:
    """Load ``where`` (a URL or a spec) as ``opts`` say and report every rate measured."""
    rates = list(opts.rates)
    if opts.search and rates == [math.inf]:
        rates = [1.0]  # the search starts low and doubles
    async with open_endpoints(where, env, options) as found:
        slo_text = opts.slo or (_spec_slo(found.plan) if found.plan else None)
        slo = metrics.parse_slo(slo_text) if slo_text else None
        if (opts.search or opts.recommend_hpa) and slo is None:
            raise SpecError("--search and --recommend-hpa need an SLO", fix="add --slo p95_ttft_ms<=1000")
        url = found.urls[0]
        for each in found.urls:
            await ensure_listening(each)
        spec_tokenizer = found.plan.model_dir if found.plan else None
        counter = datasets.load_tokenizer(opts.tokenizer or spec_tokenizer)
        count = opts.num_prompts or (None if opts.duration_s else 100)
        prompts = datasets.load_prompts(
            opts.dataset_name,
            count or 1000,
            counter,
            path=opts.dataset_path,
            input_len=opts.input_len,
            output_len=opts.output_len,
            prefix_groups=opts.prefix_groups,
            prefix_len=opts.prefix_len,
            seed=opts.seed,
        )
        served = opts.model or (found.plan.served_name if found.plan else None) or await first_model(url)
        config = loadgen.LoadConfig(
            url=url,
            model=served,
            endpoint=opts.endpoint,
            request_rate=rates[0],
            burstiness=opts.burstiness,
            max_concurrency=opts.max_concurrency,
            num_prompts=count,
            duration_s=opts.duration_s,
            warmup=opts.warmup,
            ignore_eos=opts.ignore_eos,
            seed=opts.seed,
            workers=opts.workers,
            replicas=tuple(found.urls[1:]),
            metrics_from=tuple(found.engines or ()),  # through a router: the engines' own counters
        )
        settings = {
            "endpoint": opts.endpoint,
            "dataset": opts.dataset_name,
            "num_prompts": count,
            "duration_s": opts.duration_s,
            "max_concurrency": opts.max_concurrency,
            "burstiness": opts.burstiness,
            "workers": opts.workers,
            "input_len": opts.input_len,
            "output_len": opts.output_len,
            "ignore_eos": opts.ignore_eos,
            "tokenizer": counter.source,
            "servers": len(found.urls),
        }
        result = sweep.BenchReport(url, served, settings, slo=slo)
        result.points = await sweep.sweep(
            config, prompts, counter, rates, slo, opts.search, on_point=on_point, progress=on_progress
        )
    if slo is not None and (len(result.points) > 1 or opts.search):
        result.best_rate = sweep.best_rate(result.points, slo)
    if opts.recommend_hpa:
        metric = opts.hpa_metric or (found.plan.spec.scaling.metric if found.plan else "waiting")
        result.hpa_target = sweep.recommend_hpa(result.points, slo, metric)
    return result


def _spec_slo(plan: Plan) -> str:
    """The spec's promise in bench's terms: its p95 latency is the end-to-end p95."""
    return f"p95_e2el_ms<={plan.spec.slo.p95_latency_s * 1000:g}"


async def first_model(url: str) -> str:
    """The first model the endpoint lists (as `vllm bench serve` does without --model)."""
    try:
        async with httpx.AsyncClient(timeout=10, trust_env=False) as client:
            return served_models((await client.get(f"{url}/v1/models")).json())[0]
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        raise CheckFailed(f"cannot list models at {url}/v1/models: {exc}", fix="pass --model NAME") from exc
