"""Routing policies: which available backend takes a request.

Every policy is stateless across router replicas except round-robin's counter: two routers
given the same backends and the same prompt choose the same backend, with no shared state
and memory that does not grow with traffic.

- ``prefix``: rendezvous (highest random weight) hashing of the prompt's leading text with
  bounded loads (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads",
  2017): the top-scoring backend for the system-prompt-deep key takes the request unless it
  holds more than ``BOUND`` times the average in-flight count; then the conversation-deep key
  picks among the backends under the bound, so a hot prefix spills to the same few
  replicas, and each conversation's turns stay together.
- ``session``: the same, keyed by the session (a header or the ``user`` field).
- ``least-load``: the fewest in-flight requests, counting vLLM's queue.
- ``round-robin``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

from vllm_fleet.router.backends import Backend, hash64
from vllm_fleet.router.body import RequestFacts

BOUND = 1.25  # the bounded-loads factor c: no backend above c times the average load (+1 for this request)
# Below this many requests in flight a backend never counts as overloaded: vLLM batches a few requests
# at no cost, and spilling a prefix at low load throws away the prefix cache it would have hit.
SPILL_FLOOR = 4
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # 2**64 / golden ratio, odd: Knuth's multiplicative hashing constant

Policy = Callable[[Sequence[Backend], RequestFacts, str | None], Backend]


def _top(backends: Sequence[Backend], key: int) -> Backend:
    """The backend with the highest rendezvous weight for ``key``.

    The weight is one multiplicative hash of key XOR the backend's seed, mod 2**64: both are already
    uniform 64-bit hashes (blake2b), so one odd multiply spreads them well (tests/unit/router checks the
    spread) at a fifth of splitmix64's cost in Python. CPython's own ``hash`` is no use here: its tuple
    hash of ints ranks too unevenly, and str hashes differ per process.
    """
    best, top = backends[0], -1
    for backend in backends:
        weight = ((key ^ backend.seed) * _GOLDEN) & _MASK
        if weight > top:
            best, top = backend, weight
    return best


def bounded_rendezvous(backends: Sequence[Backend], first: int, then: Callable[[], int]) -> Backend:
    """``first``'s top backend if under the load bound, else ``then()``'s top among those under it."""
    if len(backends) == 1:
        return backends[0]
    best = _top(backends, first)
    if best.in_flight < SPILL_FLOOR:
        return best
    total = sum(b.in_flight for b in backends)
    # The paper's capacity is the ceiling: without it the bound is below 1 at idle (1.25 / n), and under
    # even load below the common count + 1, so the prefix's own backend would never be chosen.
    bound = max(SPILL_FLOOR, math.ceil(BOUND * (total + 1) / len(backends)))
    if best.in_flight + 1 <= bound:
        return best
    under = [b for b in backends if b.in_flight + 1 <= bound] or list(backends)
    return _top(under, then())


def prefix(backends: Sequence[Backend], facts: RequestFacts, session: str | None) -> Backend:
    if len(backends) == 1:  # nothing to choose: no hashing
        return backends[0]
    if not facts.shallow:
        return least_load(backends, facts, session)
    return bounded_rendezvous(backends, hash64(facts.shallow), lambda: hash64(facts.deep))


def session_affinity(backends: Sequence[Backend], facts: RequestFacts, session: str | None) -> Backend:
    key = session or facts.session
    if not key:
        return least_load(backends, facts, session)
    hashed = hash64(key)
    return bounded_rendezvous(backends, hashed, lambda: hashed)


def least_load(backends: Sequence[Backend], facts: RequestFacts, session: str | None) -> Backend:
    return min(backends, key=lambda b: (b.load, b.in_flight_tokens))


def round_robin() -> Policy:
    counter = itertools.count()

    def choose(backends: Sequence[Backend], facts: RequestFacts, session: str | None) -> Backend:
        return backends[next(counter) % len(backends)]

    return choose


_MAKERS: dict[str, Callable[[], Policy]] = {
    "prefix": lambda: prefix,
    "least-load": lambda: least_load,
    "round-robin": round_robin,
    "session": lambda: session_affinity,
}
NAMES = tuple(_MAKERS)


def policy(name: str) -> Policy:
    """The policy called ``name`` (the spec's and the CLI's names); a fresh one (round-robin has a counter)."""
    if name not in _MAKERS:
        raise ValueError(f"unknown routing policy {name!r}; use one of {', '.join(NAMES)}")
    return _MAKERS[name]()
