"""bench_router.py section 0: one routing decision with 64 backends, per policy (the issue's target: at most
50 µs), beside the cheapest choice there is, ``random.choice`` over the same backends, timed in the same run.

In-process, no network: 100 chat requests with a ~1.5k-character system prompt (their facts read once, as
the router reads them on arrival), the backends' in-flight counts spread 0-4, each request decided 50 times.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from vllm_fleet.router.backends import Backend
from vllm_fleet.router.body import RequestFacts, read_facts
from vllm_fleet.router.policies import NAMES, policy

BACKENDS, REQUESTS, REPEAT = 64, 100, 50
SYSTEM = "You are a careful assistant for ACME. " * 40


def _per_decision_us(choose: Callable[[Sequence[Backend], RequestFacts, str | None], Any],
                     backends: list[Backend], requests: list[RequestFacts]) -> float:  # fmt: skip
    started = time.perf_counter()
    for _ in range(REPEAT):
        for facts in requests:
            choose(backends, facts, "session-1")
    return (time.perf_counter() - started) / (REPEAT * len(requests)) * 1e6


def run() -> dict:
    backends = [Backend(f"http://10.0.0.{i}:8000") for i in range(BACKENDS)]
    for i, backend in enumerate(backends):
        backend.in_flight = i % 5
    requests = [
        read_facts(json.dumps({"model": "m", "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"question {i}"}]}).encode())
        for i in range(REQUESTS)
    ]  # fmt: skip
    floor = _per_decision_us(lambda b, _f, _s: random.choice(b), backends, requests)
    out: dict = {"random.choice (the floor)": {"us_per_decision": floor}}
    for name in NAMES:
        us = _per_decision_us(policy(name), backends, requests)
        out[name] = {"us_per_decision": us, "times_the_floor": us / floor}
    return out
