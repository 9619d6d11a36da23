"""verify against the fake engine over real HTTP on loopback: every check passes on a good engine, and each
scripted fault fails the check that is about it (and only that one: verify stops at the first failure)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from tests.servers.fake_engine import free_port, running
from vllm_fleet.verify import VerifyReport, VerifySettings, verify, verify_all

MODEL = "fake-model"
ALL_CHECKS = ["health", "models", "chat", "stream", "slo"]


def _verify(url: str, model: str | None = MODEL, *, slo_p95_s: float = 5.0) -> VerifyReport:
    """verify with a small latency check: 3 requests of 4 tokens."""
    return asyncio.run(verify(url, model, slo_p95_s=slo_p95_s, requests=3, max_tokens=4, timeout_s=10.0))


def _served(url: str) -> int:
    """Completions the fake engine has received (its /stats)."""
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
        return json.load(resp)["served"]


def _names(report: VerifyReport) -> list[str]:
    return [c.name for c in report.checks]


def _failed(report: VerifyReport) -> str:
    """The detail of the one failed check, which must be the last one run."""
    assert not report.passed
    assert [c.ok for c in report.checks] == [True] * (len(report.checks) - 1) + [False]
    return report.checks[-1].detail


def test_a_good_engine_passes_all_five_checks() -> None:
    """Health, models, chat, stream and the SLO all pass; the answer and the p95 are recorded; the latency check
    sends ``requests`` completions besides the chat and the stream."""
    with running("--models", MODEL) as engine:
        report = _verify(engine.url)
        served = _served(engine.url)
    assert report.passed, report.checks
    assert _names(report) == ALL_CHECKS
    assert report.failed_check is None
    assert report.model == MODEL
    assert report.answer == "t0 t1 t2 t3"  # max_tokens=4 one-token pieces, stripped
    assert report.p95_latency_s is not None and 0 <= report.p95_latency_s <= 5.0
    assert report.to_dict()["passed"] is True
    assert served == 2 + 3


def test_no_model_given_takes_the_first_listed() -> None:
    """Without a model, verify checks the first name /v1/models lists."""
    with running("--models", "first,second") as engine:
        report = _verify(engine.url, model=None)
    assert report.passed, report.checks
    assert report.model == "first"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
def test_accepts_the_server_root_and_the_v1_base_url(suffix: str) -> None:
    """The root and the OpenAI client's base_url (/v1) both reach the same server; the report names the root."""
    with running("--models", MODEL) as engine:
        report = _verify(engine.url + suffix)
    assert report.passed, report.checks
    assert report.url == engine.url


def test_health_503_fails_health() -> None:
    """A dead engine's /health 503 fails the first check and nothing else runs."""
    with running("--models", MODEL, "--health-status", "503") as engine:
        report = _verify(engine.url)
    assert report.failed_check == "health"
    assert _names(report) == ["health"]
    assert "503" in _failed(report)


def test_a_model_not_listed_fails_models_naming_what_is_listed() -> None:
    """Asking for a name the server does not serve fails 'models'; the detail lists what it serves."""
    with running("--models", "alpha,beta") as engine:
        report = _verify(engine.url, model=MODEL)
    assert report.failed_check == "models"
    detail = _failed(report)
    assert MODEL in detail and "alpha" in detail and "beta" in detail


def test_empty_content_fails_chat() -> None:
    """A non-streamed answer with no content fails 'chat' (before the stream is tried)."""
    with running("--models", MODEL, "--empty-content") as engine:
        report = _verify(engine.url)
    assert report.failed_check == "chat"
    assert _names(report) == ["health", "models", "chat"]
    assert "empty answer" in _failed(report)


def test_a_stream_without_usage_fails_stream() -> None:
    """The non-streamed answer has usage (chat passes) but the stream carries none: 'stream' fails."""
    with running("--models", MODEL, "--no-usage") as engine:
        report = _verify(engine.url)
    assert report.failed_check == "stream"
    assert _names(report) == ["health", "models", "chat", "stream"]
    assert "no usage" in _failed(report)


def test_a_delay_above_the_slo_fails_slo() -> None:
    """Every answer 100 ms late against a 50 ms p95 promise: the first four checks pass, 'slo' fails."""
    with running("--models", MODEL, "--delay-ms", "100") as engine:
        report = _verify(engine.url, slo_p95_s=0.05)
    assert report.failed_check == "slo"
    assert _names(report) == ALL_CHECKS
    assert report.p95_latency_s is not None and report.p95_latency_s >= 0.1
    assert "> SLO 0.05 s" in _failed(report)


def test_the_slo_under_load_sees_the_queue_an_unloaded_check_does_not() -> None:
    """One request at a time, 30 ms each: sequential requests meet a 150 ms promise; 8 at 200 req/s queue
    behind each other (the fake engine's --max-num-seqs 1), so the p95 under load misses it."""
    with running("--models", MODEL, "--delay-ms", "30", "--max-num-seqs", "1") as engine:
        unloaded = _verify(engine.url, slo_p95_s=0.15)
        loaded = asyncio.run(verify(engine.url, MODEL, slo_p95_s=0.15, requests=8, max_tokens=4, rate=200))
    assert unloaded.passed, unloaded.checks
    assert loaded.failed_check == "slo"
    assert loaded.p95_latency_s is not None and loaded.p95_latency_s > 0.15
    assert "8 requests at 200 req/s" in _failed(loaded)


def test_a_dead_port_fails_health() -> None:
    """Nothing listening: 'health' fails with the connection error, never an exception out of verify."""
    report = _verify(f"http://127.0.0.1:{free_port()}")
    assert report.failed_check == "health"
    assert _names(report) == ["health"]
    assert "ConnectError" in _failed(report)


def test_verify_all_reports_each_endpoint_in_order() -> None:
    """verify_all checks every URL with the settings' model and promise, one report each, in order."""
    settings = VerifySettings(model=MODEL, requests=2, slo_p95_s=5.0, max_tokens=2)
    with running("--models", MODEL) as good, running("--models", MODEL, "--health-status", "503") as sick:
        reports = asyncio.run(verify_all([good.url, sick.url], settings))
        served = [_served(good.url), _served(sick.url)]
    assert [r.url for r in reports] == [good.url, sick.url]
    assert [r.failed_check for r in reports] == [None, "health"]
    assert served == [2 + 2, 0]  # chat, stream and settings.requests; nothing reached past a failed health
