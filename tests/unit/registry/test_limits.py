"""The per-key limiter on a fake clock: limits reached give a Retry-After, time passing lets requests in again."""

from __future__ import annotations

import pytest

from vllm_fleet.registry import KeyLimits
from vllm_fleet.registry.limits import SWEEP_EVERY_S, Limiter

RPM = KeyLimits("k", requests_per_min=3)
TPM = KeyLimits("k", tokens_per_min=600)


def test_unlimited_keys_are_always_allowed_and_not_remembered() -> None:
    limiter = Limiter()
    assert all(limiter.check("k", KeyLimits("k"), 10**9, now=0.0) is None for _ in range(1000))
    assert len(limiter) == 0


def test_requests_per_minute_burst_then_retry_after() -> None:
    limiter = Limiter()
    assert [limiter.check("k", RPM, 0, now=0.0) for _ in range(3)] == [None, None, None]
    wait = limiter.check("k", RPM, 0, now=0.0)
    assert wait == pytest.approx(20.0)  # one request refills in 60 / 3 s
    assert limiter.check("k", RPM, 0, now=19.9) == pytest.approx(0.1)
    assert limiter.check("k", RPM, 0, now=20.0) is None  # the window passed: allowed again
    assert limiter.check("k", RPM, 0, now=20.0) is not None


def test_a_refused_request_is_not_charged() -> None:
    limiter = Limiter()
    for _ in range(3):
        limiter.check("k", RPM, 0, now=0.0)
    for t in (1.0, 2.0, 3.0):
        assert limiter.check("k", RPM, 0, now=t) is not None
    assert limiter.check("k", RPM, 0, now=20.0) is None


def test_tokens_per_minute() -> None:
    limiter = Limiter()
    assert limiter.check("k", TPM, 500, now=0.0) is None
    wait = limiter.check("k", TPM, 200, now=0.0)
    assert wait == pytest.approx(10.0)  # 100 tokens short at 10 tokens/s
    assert limiter.check("k", TPM, 200, now=10.0) is None


def test_a_request_larger_than_the_minute_waits_for_a_full_bucket_and_leaves_debt() -> None:
    limiter = Limiter()
    assert limiter.check("k", TPM, 100, now=0.0) is None
    assert limiter.check("k", TPM, 5000, now=0.0) == pytest.approx(10.0)  # needs a full bucket, not 5000
    assert limiter.check("k", TPM, 5000, now=10.0) is None
    assert limiter.check("k", TPM, 1, now=10.0) == pytest.approx((4400 + 1) / 10)  # 4400 in debt


def test_charge_settles_the_tokens_a_response_really_used() -> None:
    limiter = Limiter()
    assert limiter.check("k", TPM, 100, now=0.0) is None
    limiter.charge("k", TPM, 500, now=0.0)  # the completion used 500 more
    assert limiter.check("k", TPM, 100, now=0.0) == pytest.approx(10.0)
    limiter.charge("k", TPM, -10_000, now=0.0)  # a refund never fills past the bucket
    assert limiter.check("k", TPM, 600, now=0.0) is None


def test_both_limits_apply_and_the_longer_wait_is_reported() -> None:
    both = KeyLimits("k", requests_per_min=60, tokens_per_min=60)
    limiter = Limiter()
    assert limiter.check("k", both, 60, now=0.0) is None
    assert limiter.check("k", both, 30, now=0.0) == pytest.approx(30.0)


def test_keys_are_limited_separately() -> None:
    limiter = Limiter()
    for _ in range(3):
        limiter.check("a", RPM, 0, now=0.0)
    assert limiter.check("a", RPM, 0, now=0.0) is not None
    assert limiter.check("b", KeyLimits("b", requests_per_min=3), 0, now=0.0) is None


def test_a_clock_stepping_back_refills_nothing() -> None:
    limiter = Limiter()
    for _ in range(3):
        limiter.check("k", RPM, 0, now=100.0)
    assert limiter.check("k", RPM, 0, now=50.0) is not None


def test_idle_keys_are_forgotten() -> None:
    limiter = Limiter()
    for i in range(100):
        limiter.check(f"k{i}", RPM, 0, now=0.0)
    limiter.check("busy", RPM, 0, now=0.0)
    assert len(limiter) == 101
    later = SWEEP_EVERY_S + 1
    for _ in range(3):
        limiter.check("busy", RPM, 0, now=later)  # its bucket is empty: remembered
    assert len(limiter) == 1
    assert limiter.check("busy", RPM, 0, now=later) is not None  # forgetting others changed nothing for it


def test_memory_is_bounded_by_max_keys() -> None:
    limiter = Limiter(max_keys=10)
    for i in range(1000):
        limiter.check(f"k{i}", RPM, 0, now=float(i) / 1000)
    assert len(limiter) == 10


def test_another_replicas_use_is_debited_here_and_a_debt_waits_for_the_refill() -> None:
    limiter = Limiter()
    assert limiter.check("k", RPM, 0, now=0.0) is None
    limiter.debit("k", RPM, 4, 0, now=0.0)  # another replica let 4 through: 1 + 4 of 3 a minute
    wait = limiter.check("k", RPM, 0, now=0.0)
    assert wait == pytest.approx(60.0)  # from -2 to 1 at 3 a minute
    assert limiter.check("k", RPM, 0, now=60.0) is None
    assert limiter.check("k", RPM, 0, now=60.0) is not None
    limiter.debit("t", TPM, 0, -(10**6), now=0.0)  # a credit (fewer tokens used) never fills past the limit
    assert limiter.check("t", TPM, 600, now=0.0) is None and limiter.check("t", TPM, 1, now=0.0) is not None
    limiter.debit("u", KeyLimits("u"), 10**6, 10**6, now=0.0)  # an unlimited key: nothing to take from
    assert len(limiter) == 2
    limiter.debit("k", RPM, 10**6, 0, now=60.0)  # a debt is at most a window's allowance: -3
    assert limiter.check("k", RPM, 0, now=60.0) == pytest.approx(80.0)


def test_spend_is_reported_once_until_it_changes_and_again_if_a_report_was_lost() -> None:
    limiter = Limiter()
    limiter.check("a", TPM, 100, now=0.0)
    limiter.check("a", TPM, 50, now=0.0)
    limiter.charge("a", TPM, -30, now=0.0)  # the answer used fewer tokens than estimated
    limiter.check("b", RPM, 7, now=0.0)
    assert limiter.check("b", RPM, 0, now=0.0) is None
    assert limiter.report() == {"a": (2.0, 120.0), "b": (2.0, 7.0)}
    assert limiter.report() == {}
    limiter.check("b", RPM, 0, now=0.0)
    report = limiter.report()
    assert report == {"b": (3.0, 7.0)}
    limiter.unreported(report)
    assert limiter.report() == {"b": (3.0, 7.0)}
    assert limiter.report(everything=True) == {"a": (2.0, 120.0), "b": (3.0, 7.0)}
    assert limiter.check("x", KeyLimits("x"), 5, now=0.0) is None and "x" not in limiter.report(everything=True)
