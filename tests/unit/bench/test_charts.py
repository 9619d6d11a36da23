"""The HTML report's charts agree with the table: the same percentiles, one unit, whole-number count axes."""

from __future__ import annotations

import re

from vllm_fleet.bench import charts
from vllm_fleet.bench.metrics import percentile
from vllm_fleet.bench.report import cell


def test_histogram_markers_are_the_tables_percentiles() -> None:
    values = [float(v) for v in (1, 2, 3, 4, 100)]  # nearest rank and interpolation disagree here
    svg = charts.histogram("E2E latency", "ms", values)
    shown = dict(re.findall(r">p(50|99) ([\d.]+)<", svg))
    assert float(shown["50"]) == percentile(values, 50)
    assert float(shown["99"]) == round(percentile(values, 99), 1)


def test_count_axes_have_whole_number_ticks() -> None:
    svg = charts.histogram("TTFT", "ms", [1.0, 1.0, 1.0, 2.0])  # at most 3 in a bin
    ticks = re.findall(r'text-anchor="end">([\d.]+)</text>', svg)
    assert ticks and all(float(t).is_integer() for t in ticks)
    queue = charts.lines("Server queue", "s", "requests", {"waiting": [(0, 0), (1, 3)]}, counts=True)
    assert all(float(t).is_integer() for t in re.findall(r'text-anchor="end">([\d.]+)</text>', queue))


def test_kv_cache_usage_is_a_percentage_in_the_table_as_in_its_chart() -> None:
    assert cell({"server_max_kv_cache_usage": 0.25}, "server_max_kv_cache_usage") == "25.0"
    assert cell({"server_prefix_cache_hit_rate": 0.5}, "server_prefix_cache_hit_rate") == "50.0"
