"""Metric definitions: percentiles, SLO parsing, the summary's vLLM keys, ITL splitting, arrival schedules."""

from __future__ import annotations

import itertools
import math
import statistics

import pytest

from vllm_fleet.bench.loadgen import LoadConfig, send_times, split_gaps
from vllm_fleet.bench.metrics import RequestResult, parse_slo, percentile, summarize
from vllm_fleet.errors import SpecError


def test_percentile_interpolates_like_numpy():
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 99) == pytest.approx(3.97)
    assert percentile([7.0], 99) == 7.0


def test_slo_parsing_and_default_stat():
    slo = parse_slo("p95_ttft_ms<=1000, e2el_ms<=3000,mean_tpot_ms<=50")
    assert slo.terms == (("p95_ttft_ms", 1000.0), ("p95_e2el_ms", 3000.0), ("mean_tpot_ms", 50.0))
    assert slo.met_by({"p95_ttft_ms": 999, "p95_e2el_ms": 3000, "mean_tpot_ms": 1})
    assert not slo.met_by({"p95_ttft_ms": 1001, "p95_e2el_ms": 1, "mean_tpot_ms": 1})


def test_bad_slo_term_is_a_spec_error():
    with pytest.raises(SpecError, match="ttft_sec"):
        parse_slo("p95_ttft_sec<1")


def _result(i: int, ttft: float, e2el: float, tokens: int, ok: bool = True) -> RequestResult:
    return RequestResult(
        index=i,
        scheduled_s=0.0,
        sent_s=0.01,
        ttft_s=ttft,
        e2el_s=e2el,
        itl_s=[(e2el - ttft) / max(tokens - 1, 1)] * (tokens - 1),
        prompt_tokens=10,
        output_tokens=tokens,
        success=ok,
        error_kind="" if ok else "http 500",
    )


def test_summary_uses_vllm_keys_and_excludes_warmup():
    results = [_result(i, 0.1 * (i + 1), 1.0 + i, 11) for i in range(4)]
    results.append(_result(9, 0, 0, 0, ok=False))
    results.append(RequestResult(index=-1, scheduled_s=0, success=True, warmup=True, output_tokens=999))
    summary = summarize(results, duration_s=2.0, slo=parse_slo("p95_ttft_ms<=1000"))
    assert summary["completed"] == 4 and summary["failed"] == 1
    assert summary["total_input_tokens"] == 40 and summary["total_output_tokens"] == 44
    assert summary["request_throughput"] == 2.0 and summary["output_throughput"] == 22.0
    assert summary["median_ttft_ms"] == pytest.approx(250.0)
    assert summary["mean_tpot_ms"] == pytest.approx(statistics.fmean((1.0 + i - 0.1 * (i + 1)) * 100 for i in range(4)))
    assert summary["errors"] == {"http 500": 1}
    assert summary["p99_client_queue_ms"] == pytest.approx(10.0)
    assert summary["slo_met"] is True and summary["request_goodput"] == 2.0
    for key in ("mean_itl_ms", "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms", "std_ttft_ms", "p90_tpot_ms"):
        assert key in summary


def test_a_chunk_of_several_tokens_splits_its_gap():
    chunks = [(0.0, "a"), (0.1, "b"), (0.4, "ccc")]
    assert split_gaps(chunks, 3) == [pytest.approx(0.1), pytest.approx(0.3)]
    gaps = split_gaps(chunks, 5)
    assert gaps == [pytest.approx(0.1), *[pytest.approx(0.1)] * 3]


def test_poisson_schedule_has_the_requested_mean_rate_and_is_reproducible():
    config = LoadConfig(url="http://x", model="m", request_rate=50.0, num_prompts=20000, seed=3)
    times = send_times(config, config.num_prompts)
    assert times == send_times(config, config.num_prompts)
    assert (len(times) - 1) / times[-1] == pytest.approx(50.0, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(1.0, rel=0.05)  # exponential: cv 1


def test_burstiness_below_one_is_burstier_and_duration_bounds_the_schedule():
    config = LoadConfig(url="http://x", model="m", request_rate=50.0, burstiness=0.25, num_prompts=None, duration_s=200)
    times = send_times(config, None)
    assert max(times) < 200 and (len(times) - 1) / times[-1] == pytest.approx(50.0, rel=0.1)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert statistics.pstdev(gaps) / statistics.fmean(gaps) == pytest.approx(2.0, rel=0.1)  # gamma k: cv 1/sqrt(k)


def test_infinite_rate_sends_everything_at_once():
    assert send_times(LoadConfig(url="x", model="m", request_rate=math.inf), 3) == [0.0, 0.0, 0.0]


def test_worker_shares_add_up_and_merge_renumbers():
    from vllm_fleet.bench.loadgen import RunResult
    from vllm_fleet.bench.scrape import ServerMetrics
    from vllm_fleet.bench.workers import merge, share

    config = LoadConfig(url="http://x", model="m", request_rate=90.0, num_prompts=10, max_concurrency=5)
    shares = [share(config, i, 3) for i in range(3)]
    assert [s.num_prompts for s in shares] == [4, 3, 3] and sum(s.request_rate for s in shares) == 90.0
    assert [s.scrape_metrics for s in shares] == [True, False, False] and len({s.seed for s in shares}) == 3
    runs = [
        RunResult(30.0, [RequestResult(index=0, scheduled_s=t) for t in times], d, ServerMetrics())
        for times, d in (([0.2, 0.0], 1.0), ([0.1], 2.0))
    ]
    merged = merge(config, runs, workers=3)
    assert [(r.index, r.scheduled_s) for r in merged.results] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    assert merged.duration_s == 2.0 and "only 2 of 3" in merged.stopped_early


def test_a_missed_slo_says_which_term_and_by_how_much() -> None:
    slo = parse_slo("p95_ttft_ms<=1000,p95_e2el_ms<=3000")
    summary = {"p95_ttft_ms": 400.0, "p95_e2el_ms": 7200.0}
    assert slo.misses(summary) == ["p95_e2el_ms 7200 > 3000 (by 4200, 2.4x)"]
    assert not slo.met_by(summary)
    assert slo.misses({"p95_ttft_ms": 400.0}) == ["p95_e2el_ms not measured"]
    assert slo.met_by({"p95_ttft_ms": 999.0, "p95_e2el_ms": 3000.0})
