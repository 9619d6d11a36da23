"""Routing policies without a network: prefix affinity with bounded loads, session, least-load,
round-robin (issue 14)."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import pytest

from vllm_fleet.router.backends import Backend
from vllm_fleet.router.body import RequestFacts, read_facts
from vllm_fleet.router.policies import least_load, policy, prefix, round_robin, session_affinity

SYSTEM = "You are a careful assistant for ACME. " * 40  # ~1.5k characters: a real system prompt's size


def pool(n: int, *, shuffled: bool = False) -> list[Backend]:
    backends = [Backend(f"http://10.0.0.{i}:8000") for i in range(n)]
    if shuffled:
        random.Random(n).shuffle(backends)
    return backends


def facts(**body: Any) -> RequestFacts:
    return read_facts(json.dumps({"model": "m", **body}).encode())


def conversation(user: str, system: str = SYSTEM) -> RequestFacts:
    return facts(messages=[{"role": "system", "content": system}, {"role": "user", "content": user}])


def test_the_same_leading_text_goes_to_the_same_backend_and_two_routers_agree() -> None:
    mine, theirs = pool(8), pool(8, shuffled=True)  # another router replica: its own objects, another order
    by_url = {b.url: b for b in theirs}
    assert policy("prefix") is not None
    for i in range(200):
        request = facts(prompt=f"document {i}: " + "lorem ipsum " * 20)
        chosen = prefix(mine, request, None)
        assert prefix(mine, request, None) is chosen
        assert policy("prefix")(theirs, request, None) is by_url[chosen.url]


def test_prefixes_spread_over_the_backends() -> None:
    backends = pool(8)
    counts = Counter(prefix(backends, facts(prompt=f"prefix {i} " * 10), None).url for i in range(2000))
    assert len(counts) == 8 and min(counts.values()) > 2000 / 8 / 2, counts


def test_a_shared_system_prompt_goes_to_one_backend_whatever_the_user_says() -> None:
    backends = pool(8)
    chosen = {prefix(backends, conversation(f"question {i}?"), None).url for i in range(50)}
    assert len(chosen) == 1
    other_system = {
        prefix(backends, conversation("question?", system=f"system {i} " * 50), None).url for i in range(50)
    }
    assert len(other_system) > 1  # the key is the system prompt: others land elsewhere


def test_a_long_shared_prompt_prefix_goes_to_one_backend_whatever_follows() -> None:
    backends = pool(8)
    head = "shared context " * 200  # past the shallow depth
    assert len({prefix(backends, facts(prompt=head + f" tail {i}"), None).url for i in range(50)}) == 1


def test_affinity_holds_under_even_load() -> None:
    # Every backend busy alike is no reason to leave the prefix's backend (the bound is a ceiling).
    for n in (2, 4, 8, 64):
        backends = pool(n)
        idle = prefix(backends, conversation("first"), None)
        for busy in (1, 2, 5):
            for b in backends:
                b.in_flight = busy
            chosen = {prefix(backends, conversation(f"q{i}"), None).url for i in range(20)}
            assert chosen == {idle.url}, (n, busy)


def test_a_hot_prefix_spills_consistently_once_its_backend_is_far_above_the_average() -> None:
    backends = pool(8)
    hot = prefix(backends, conversation("hi"), None)
    hot.in_flight = 20  # the others idle: far above the average
    spilled = prefix(backends, conversation("hi"), None)
    assert spilled is not hot
    assert prefix(backends, conversation("hi"), None) is spilled  # the same spill every time
    twin = pool(8, shuffled=True)  # another router replica seeing the same loads agrees
    next(b for b in twin if b.url == hot.url).in_flight = 20
    assert prefix(twin, conversation("hi"), None).url == spilled.url
    # Each conversation spills by its own (deeper) key: they spread, and none goes to the hot one.
    spread = {prefix(backends, conversation(f"user {i}"), None).url for i in range(100)}
    assert hot.url not in spread and len(spread) > 2
    hot.in_flight = 0
    assert prefix(backends, conversation("hi"), None) is hot  # back under the bound: back home


def test_removing_a_backend_moves_only_the_keys_it_held() -> None:
    backends = pool(8)
    requests = [facts(prompt=f"doc {i} " * 5) for i in range(500)]
    before = [prefix(backends, r, None) for r in requests]
    gone = backends[3]
    after = [prefix([b for b in backends if b is not gone], r, None) for r in requests]
    assert all(a is b for a, b in zip(before, after, strict=True) if a is not gone)


def test_no_text_falls_back_to_least_load() -> None:
    backends = pool(3)
    backends[0].in_flight, backends[1].in_flight, backends[2].in_flight = 3, 0, 2
    assert prefix(backends, facts(messages=[]), None) is backends[1]


def test_session_by_header_and_by_user_field() -> None:
    backends = pool(8)
    anything = [facts(prompt=f"turn {i}") for i in range(20)]
    assert len({session_affinity(backends, f, "sess-1").url for f in anything}) == 1
    by_user = {session_affinity(backends, facts(prompt=f"turn {i}", user="alice"), None).url for i in range(20)}
    assert len(by_user) == 1
    # The header wins over the field; sessions spread; no session: least load.
    header = session_affinity(backends, facts(prompt="x", user="alice"), "sess-1")
    assert header is session_affinity(backends, facts(prompt="y"), "sess-1")
    assert len({session_affinity(backends, facts(prompt="x"), f"s{i}").url for i in range(100)}) > 4
    backends[5].in_flight = -1  # the least loaded
    assert session_affinity(backends, facts(prompt="x"), None) is backends[5]


def test_least_load_counts_own_in_flight_and_the_engine_queue() -> None:
    a, b, c = pool(3)
    a.in_flight, b.in_flight, c.in_flight = 2, 1, 1
    c.engine_waiting = 4  # vLLM says its queue is long
    assert least_load([a, b, c], facts(prompt="x"), None) is b
    b.engine_waiting = 2
    assert least_load([a, b, c], facts(prompt="x"), None) is a
    a.in_flight, b.in_flight, c.in_flight, b.engine_waiting, c.engine_waiting = 1, 1, 1, 0, 0
    b.in_flight_tokens, a.in_flight_tokens, c.in_flight_tokens = 10, 500, 100  # a tie: fewer tokens wins
    assert least_load([a, b, c], facts(prompt="x"), None) is b


def test_round_robin_cycles_and_each_instance_counts_for_itself() -> None:
    backends = pool(3)
    first, second = round_robin(), policy("round-robin")
    picks = [first(backends, facts(prompt="x"), None) for _ in range(7)]
    assert picks == [*backends, *backends, backends[0]]
    assert second(backends, facts(prompt="x"), None) is backends[0]


def test_an_unknown_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="least-load"):
        policy("random")
