"""Datasets, the /metrics parser, the sweep's search and HPA target, the HTML report."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from vllm_fleet.bench import datasets, report, sweep
from vllm_fleet.bench.loadgen import RunResult
from vllm_fleet.bench.metrics import RequestResult, parse_slo, summarize
from vllm_fleet.bench.scrape import ServerMetrics
from vllm_fleet.errors import SpecError
from vllm_fleet.wire.prometheus import parse_prometheus

COUNTER = datasets.TokenCounter()


def test_random_prompts_have_the_length_and_differ():
    prompts = datasets.load_prompts("random", 5, COUNTER, input_len=40, output_len=7)
    assert len({p.text for p in prompts}) == 5
    assert all(COUNTER.count(p.text) == 40 and p.output_len == 7 for p in prompts)


def test_shared_prefix_groups_share_their_prefix():
    prompts = datasets.load_prompts("shared-prefix", 6, COUNTER, prefix_groups=2, prefix_len=30, input_len=5)
    heads = [p.text.split("\n")[0] for p in prompts]
    assert heads[0] == heads[2] == heads[4] != heads[1] == heads[3]
    assert prompts[0].prompt_len == 35


def test_sharegpt_takes_first_turns_and_filters_short_ones(tmp_path: Path):
    long = "word " * 10
    rows = [
        {"conversations": [{"from": "human", "value": long}, {"from": "gpt", "value": long * 2}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": long}]},
        {"conversations": [{"from": "human", "value": long}]},
    ]
    path = tmp_path / "sg.json"
    path.write_text(json.dumps(rows))
    prompts = datasets.load_prompts("sharegpt", 10, COUNTER, path=path)
    assert [(p.prompt_len, p.output_len) for p in prompts] == [(10, 20)]


def test_jsonl_strings_and_objects(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text('"plain prompt"\n\n{"prompt": "with length", "output_len": 5}\n')
    prompts = datasets.load_prompts("jsonl", 10, COUNTER, path=path, output_len=9)
    assert [(p.text, p.output_len) for p in prompts] == [("plain prompt", 9), ("with length", 5)]


def test_bad_jsonl_line_names_the_line(tmp_path: Path):
    path = tmp_path / "p.jsonl"
    path.write_text('"ok"\n{"nope": 1}\n')
    with pytest.raises(SpecError, match=r"p.jsonl:2"):
        datasets.load_prompts("jsonl", 10, COUNTER, path=path)


def test_file_datasets_need_a_path():
    with pytest.raises(SpecError, match="--dataset-path"):
        datasets.load_prompts("sharegpt", 1, COUNTER)


def test_prometheus_parse_sums_label_sets():
    text = (
        "# HELP vllm:num_requests_waiting x\n"
        'vllm:num_requests_waiting{engine="0",model_name="m"} 3.0\n'
        'vllm:num_requests_waiting{engine="1",model_name="m"} 2.0\n'
        'vllm:prompt_tokens_total{model_name="m"} 1.5e3\n'
        'vllm:prompt_tokens_created{model_name="m"} 1.7e9\n'
        "vllm:kv_cache_usage_perc 0.25\n"
    )
    assert parse_prometheus(text) == {
        "vllm:num_requests_waiting": 5.0,
        "vllm:prompt_tokens_total": 1500.0,
        "vllm:kv_cache_usage_perc": 0.25,
    }


def test_server_metrics_deltas_and_hit_rate():
    server = ServerMetrics()
    server.add(0, {"vllm:prefix_cache_hits_total": 10, "vllm:prefix_cache_queries_total": 100})
    server.add(
        1, {"vllm:prefix_cache_hits_total": 40, "vllm:prefix_cache_queries_total": 140, "vllm:num_requests_waiting": 4}
    )
    summary = server.summary()
    assert summary["server_prefix_cache_hit_rate"] == 0.75 and summary["server_max_waiting"] == 4
    assert summary["server_prompt_tokens"] is None


def _point(rate: float, ttft_s: float, waiting: float | None = None) -> sweep.Point:
    results = [
        RequestResult(
            index=i, scheduled_s=0, ttft_s=ttft_s, e2el_s=ttft_s * 2, output_tokens=4, itl_s=[0.01] * 3, success=True
        )
        for i in range(20)
    ]
    server = ServerMetrics()
    if waiting is not None:
        server.add(0.5, {"vllm:num_requests_waiting": waiting})
    run = RunResult(rate, results, 2.0, server)
    summary = summarize(results, 2.0, parse_slo("p95_ttft_ms<=100")) | {"request_rate": rate}
    return sweep.Point(run, summary | server.summary())


def test_search_doubles_then_bisects_to_the_knee():
    slo = parse_slo("p95_ttft_ms<=100")
    measured: list[float] = []
    points: list[sweep.Point] = []

    async def at(rate: float) -> sweep.Point:
        measured.append(rate)
        point = _point(rate, 0.05 if rate <= 5.5 else 0.2)
        points.append(point)
        return point

    asyncio.run(at(1.0))
    asyncio.run(sweep._search(at, points, slo, steps=4))
    assert measured[:5] == [1.0, 2.0, 4.0, 8.0, 6.0]
    assert sweep.best_rate(points, slo) == pytest.approx(5.5, abs=0.3)


def test_recommend_hpa_reads_waiting_at_the_knee():
    slo = parse_slo("p95_ttft_ms<=100")
    points = [_point(1, 0.01, waiting=0.2), _point(4, 0.05, waiting=2.4), _point(8, 0.5, waiting=30)]
    hpa = sweep.recommend_hpa(points, slo)
    assert hpa["target"] == 3 and "4 req/s" in hpa["why"]
    assert sweep.recommend_hpa([_point(8, 0.5, waiting=30)], slo)["target"] is None


def test_html_report_is_self_contained_with_plots():
    slo = parse_slo("p95_ttft_ms<=100")
    bench = sweep.BenchReport("http://h", "m", {"dataset": "random"}, [_point(1, 0.01, 0.5), _point(4, 0.05, 2)], slo)
    bench.best_rate, bench.hpa_target = 4.0, sweep.recommend_hpa(bench.points, slo)
    html = report.render_html(bench)
    assert html.count("<svg") >= 7 and "<script" not in html and "http-equiv" not in html
    assert "SLO p95_ttft_ms 100" in html and "4 req/s" in html
    assert report.cell({"x": math.inf}, "x") == "inf"


def test_recommend_hpa_names_the_target_for_the_chosen_metric():
    slo = parse_slo("p95_ttft_ms<=100")
    points = [_point(1, 0.01), _point(4, 0.05), _point(8, 0.5)]
    points[1].run.server.add(0.7, {"vllm:num_requests_waiting": 1.0, "vllm:num_requests_running": 5.2})
    points[1].summary.update(points[1].run.server.summary())
    running = sweep.recommend_hpa(points, slo, "running")
    assert running["metric"] == "vllm:num_requests_running" and running["target"] == 6
    assert running["scaling_metric"] == "running" and "num requests running" in running["why"]
    gpu = sweep.recommend_hpa(points, slo, "gpu-utilization")
    assert gpu["target"] is None and "DCGM_FI_DEV_GPU_UTIL" in gpu["why"]
