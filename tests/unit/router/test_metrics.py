"""The router's per-request counts, as Prometheus reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from vllm_fleet.router.metrics import RouterMetrics


def _samples(metrics: RouterMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, read back by prometheus_client's own text parser."""
    text = metrics.exposition().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_added_latency_buckets_count_what_is_at_most_their_bound() -> None:
    metrics = RouterMetrics()
    for seconds in (0.00004, 0.00005, 0.0004, 3.0):  # 50 µs is the first bound itself: it counts there
        metrics.added(seconds)
    found = _samples(metrics)
    bucket = "vllm_fleet_router_added_latency_seconds_bucket"
    assert found[bucket, (("le", "5e-05"),)] == 2
    assert found[bucket, (("le", "0.0003"),)] == 2
    assert found[bucket, (("le", "0.0005"),)] == 3
    assert found[bucket, (("le", "1.0"),)] == 3
    assert found[bucket, (("le", "+Inf"),)] == 4
    assert found["vllm_fleet_router_added_latency_seconds_count", ()] == 4
    assert abs(found["vllm_fleet_router_added_latency_seconds_sum", ()] - 3.00049) < 1e-9


def test_answers_are_counted_by_model_backend_and_status() -> None:
    metrics = RouterMetrics()
    for status in (200, 200, 502):
        metrics.answered("m", "http://b:1", status)
    found = _samples(metrics)
    name = "vllm_fleet_router_requests_total"
    assert found[name, (("backend", "http://b:1"), ("model", "m"), ("status", "200"))] == 2
    assert found[name, (("backend", "http://b:1"), ("model", "m"), ("status", "502"))] == 1
