"""A key's buckets and a replica's wallet on a fake clock: limits reached give a wait, time lets requests in again,
and leases taken by several replicas never add up to more than the key's limits."""

from __future__ import annotations

import pytest

from vllm_fleet.registry import KeyLimits
from vllm_fleet.registry.limits import NOTHING, Allowance, Buckets, Wallet

RPM = KeyLimits("k", requests_per_min=3)
TPM = KeyLimits("k", tokens_per_min=600)
ONE = Allowance(requests=1)


def admitted(buckets: Buckets, wallet: Wallet, tokens: int, now: float) -> float | None:
    """One request through a wallet leasing from ``buckets``, as the router does: None if let in, else the wait."""
    if wallet.spend(tokens, now):
        return None
    want, need, owed = wallet.lease(tokens)
    lease, wait = buckets.take(wallet.limits, want, need, now, owed)
    wallet.receive(lease)
    return None if wallet.spend(tokens, now) else wait


def test_requests_per_minute_burst_then_a_wait_and_a_refusal_costs_nothing() -> None:
    buckets = Buckets.full(RPM, 0.0)
    assert [buckets.take(RPM, ONE, ONE, 0.0) for _ in range(3)] == [(ONE, 0.0)] * 3
    assert buckets.take(RPM, ONE, ONE, 0.0) == (NOTHING, pytest.approx(20.0))  # one request refills in 60 / 3 s
    assert buckets.take(RPM, ONE, ONE, 19.9) == (NOTHING, pytest.approx(0.1))
    assert buckets.take(RPM, ONE, ONE, 20.0) == (ONE, 0.0)  # the refusals took nothing
    assert buckets.take(RPM, ONE, ONE, 20.0)[0] is NOTHING


def test_a_lease_takes_what_it_wants_up_to_what_is_there_if_its_need_is() -> None:
    buckets = Buckets.full(RPM, 0.0)
    assert buckets.take(RPM, Allowance(requests=2), ONE, 0.0) == (Allowance(requests=2), 0.0)
    assert buckets.take(RPM, Allowance(requests=2), Allowance(requests=2), 0.0) == (NOTHING, pytest.approx(20.0))
    assert buckets.take(RPM, Allowance(requests=2), ONE, 0.0) == (ONE, 0.0)  # the one left


def test_tokens_per_minute_and_a_request_larger_than_the_minute_waits_for_a_full_bucket_into_debt() -> None:
    buckets = Buckets.full(TPM, 0.0)
    assert buckets.take(TPM, Allowance(tokens=500), Allowance(tokens=500), 0.0)[1] == 0.0
    assert buckets.take(TPM, Allowance(tokens=200), Allowance(tokens=200), 0.0)[1] == pytest.approx(10.0)
    assert buckets.take(TPM, Allowance(tokens=5000), Allowance(tokens=5000), 0.0)[1] == pytest.approx(50.0)
    assert buckets.take(TPM, Allowance(tokens=5000), Allowance(tokens=5000), 50.0) == (Allowance(tokens=5000), 0.0)
    # The debt is at most a minute's allowance (the estimate is never settled): a full bucket 2 minutes on.
    assert buckets.take(TPM, Allowance(tokens=600), Allowance(tokens=600), 50.0)[1] == pytest.approx(120.0)


def test_both_limits_apply_the_longer_wait_is_reported_and_nothing_is_taken_from_either() -> None:
    both = KeyLimits("k", requests_per_min=60, tokens_per_min=60)
    buckets = Buckets.full(both, 0.0)
    assert buckets.take(both, Allowance(1, 60), Allowance(1, 60), 0.0)[1] == 0.0
    assert buckets.take(both, Allowance(1, 30), Allowance(1, 30), 0.0) == (NOTHING, pytest.approx(30.0))
    assert buckets.requests == pytest.approx(59.0)  # the refused request took no request either


def test_a_clock_stepping_back_refills_nothing_and_a_lease_given_back_never_fills_past_full() -> None:
    buckets = Buckets.full(RPM, 100.0)
    for _ in range(3):
        buckets.take(RPM, ONE, ONE, 100.0)
    assert buckets.take(RPM, ONE, ONE, 50.0)[0] is NOTHING
    buckets.give(RPM, Allowance(requests=2), 50.0)
    assert buckets.requests == pytest.approx(2.0)
    buckets.give(RPM, Allowance(requests=10**6), 50.0)
    assert buckets.requests == pytest.approx(3.0)


def test_a_wallet_spends_from_its_lease_and_leases_about_a_second_of_the_rate() -> None:
    limits = KeyLimits("k", requests_per_min=600, tokens_per_min=60_000)
    buckets, wallet = Buckets.full(limits, 0.0), Wallet(limits)
    assert wallet.lease(100) == (Allowance(11, 1100), Allowance(1, 100), 0.0)  # need + 10 req/s and 1,000 tok/s
    assert admitted(buckets, wallet, 100, 0.0) is None
    assert buckets.requests == pytest.approx(589) and buckets.tokens == pytest.approx(58_900)
    assert all(admitted(buckets, wallet, 100, 0.0) is None for _ in range(10))  # the lease, no new one
    assert buckets.requests == pytest.approx(589)
    assert admitted(buckets, wallet, 100, 0.0) is None  # the next lease
    assert buckets.requests == pytest.approx(578)
    assert wallet.empty() == Allowance(10, 1000) and wallet.empty() == NOTHING


def test_an_unlimited_bucket_needs_no_lease_and_the_other_still_counts() -> None:
    rpm_only = KeyLimits("k", requests_per_min=3)
    buckets, wallet = Buckets.full(rpm_only, 0.0), Wallet(rpm_only)
    assert [admitted(buckets, wallet, 10**9, 0.0) for _ in range(3)] == [None] * 3
    assert admitted(buckets, wallet, 0, 0.0) == pytest.approx(20.0)
    assert buckets.tokens == 0.0


def test_replicas_leasing_from_one_key_admit_its_limit_together_however_the_requests_are_spread() -> None:
    limits = KeyLimits("k", requests_per_min=60, tokens_per_min=6_000)
    for spread in (1, 2, 5):  # a burst on one replica, or sent to all at once
        buckets = Buckets.full(limits, 0.0)
        wallets = [Wallet(limits) for _ in range(spread)]
        let_in = sum(admitted(buckets, wallets[i % spread], 10, 0.0) is None for i in range(500))
        assert let_in == 60  # the whole minute's allowance, never more
        later = sum(admitted(buckets, wallets[i % spread], 10, 30.0) is None for i in range(500))
        assert later == 30  # and then the rate: 30 s refilled half of it


def test_leases_are_whole_requests_and_tokens_so_no_wallet_holds_a_fraction_no_request_can_use() -> None:
    limits = KeyLimits("k", requests_per_min=5, tokens_per_min=90)  # a twelfth of a request, 1.5 tokens a second
    buckets, wallet = Buckets.full(limits, 0.0), Wallet(limits)
    assert wallet.lease(3) == (Allowance(1, 4), Allowance(1, 3), 0.0)
    assert admitted(buckets, wallet, 3, 0.0) is None and wallet.empty() == Allowance(0, 1)
    buckets.requests = 2.75  # refilled part of the way: a lease of 2, not 2.75
    assert buckets.take(limits, Allowance(requests=9), ONE, 0.0)[0].requests == 2


def test_after_a_refusal_the_keys_requests_are_refused_for_up_to_a_lease_span_without_asking_again() -> None:
    wallet = Wallet(RPM)
    wallet.refuse(20.0, now=100.0)
    assert wallet.refused(100.0) == pytest.approx(20.0)
    assert wallet.refused(100.9) == pytest.approx(19.1)  # the Retry-After counts down
    assert wallet.refused(101.0) is None  # a lease's span on, the buckets are asked again
    wallet.refuse(0.2, now=200.0)
    assert wallet.refused(200.1) == pytest.approx(0.1) and wallet.refused(200.2) is None


def test_a_wallet_in_debt_pays_it_into_the_bucket_with_its_next_lease_before_its_request_is_let_in() -> None:
    """A request settled to more than its estimate leaves the wallet owing: its next lease pays the debt first,
    so the debt is not mistaken for one request larger than the minute (let in by a full bucket)."""
    buckets, wallet = Buckets.full(TPM, 0.0), Wallet(TPM)
    assert admitted(buckets, wallet, 10, 0.0) is None  # a lease of 10 + 10 a second ahead
    wallet.tokens += 10 - 500  # settled: it used 500
    assert wallet.lease(200) == (Allowance(0, 210), Allowance(0, 200), 480)  # 10 held less 490 owed; + 10 ahead
    assert wallet.tokens == 0  # the debt goes with the asking
    wallet.tokens = -480
    # 600 refilled (a minute on) less the 480 owed leaves 120: the request of 200 waits 8 s, and pays the debt
    assert admitted(buckets, wallet, 200, 60.0) == pytest.approx(8.0)
    assert buckets.tokens == pytest.approx(120) and wallet.tokens == 0
    assert admitted(buckets, wallet, 200, 68.0) is None


def test_a_debt_given_back_comes_off_the_bucket_never_past_one_minute_owed() -> None:
    """A wallet owing tokens when its key goes quiet gives the debt back, bounded at one minute's allowance."""
    buckets, wallet = Buckets.full(TPM, 0.0), Wallet(TPM)
    assert admitted(buckets, wallet, 10, 0.0) is None
    wallet.tokens += 10 - 300  # settled: it used 300
    held = wallet.empty()
    assert held == Allowance(0, -280) and bool(held)  # a debt is something to give back
    buckets.give(TPM, held, 0.0)
    assert buckets.tokens == pytest.approx(600 - 20 - 280)
    buckets.give(TPM, Allowance(tokens=-(10**6)), 0.0)
    assert buckets.tokens == pytest.approx(-600)


def test_what_the_buckets_have_left_is_read_refilled_and_nothing_is_taken() -> None:
    buckets = Buckets.full(TPM, 0.0)
    buckets.take(TPM, Allowance(tokens=600), Allowance(tokens=600), 0.0)
    assert buckets.left(TPM, 30.0) == Allowance(0.0, 300.0)  # half a minute: half refilled
    assert buckets.left(TPM, 90.0) == Allowance(0.0, 600.0)  # never past full
    assert (buckets.tokens, buckets.stamp) == (0.0, 0.0)  # only read
