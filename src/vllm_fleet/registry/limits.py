"""Per-key request and token limits, in memory, for the router: two token buckets per API key.

A bucket holds a minute's allowance and refills continuously (limit / 60 per second), so a key may
burst up to its per-minute limit and then runs at its rate. A request is charged its estimated
tokens up front; ``charge`` settles the difference once the response says what it used. A
request larger than the whole per-minute allowance is let through when the bucket is full and
leaves it in debt, rather than being refused forever.

Several router replicas keep the request path free of shared state: each counts in its own buckets,
keeps a total of what it charged each key (``spent``, what changed since the last report in
``report``), and takes what the other replicas charged from its own buckets (``debit``) when they
share their totals through the registry (``router/access.py``, every second). A key's use on any
replica so counts on every one within that second, however the requests are spread: by a Service
that balances connections, not requests, a client on one keep-alive connection meets one replica.

Pure: the caller passes ``now`` (``time.monotonic()``), so tests drive a fake clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from vllm_fleet.registry.records import KeyLimits

WINDOW_S = 60.0
SWEEP_EVERY_S = 60.0  # how often keys whose buckets have refilled are forgotten
MAX_KEYS = 100_000  # beyond this, the least recently used key is forgotten (and its debt forgiven)


@dataclass
class _Buckets:
    requests: float
    tokens: float
    stamp: float
    full_at: float = 0.0  # when both buckets are full again: from then on the state equals a fresh one


def _refilled(level: float, limit: int | None, elapsed: float) -> float:
    if limit is None:
        return 0.0
    return min(float(limit), level + elapsed * limit / WINDOW_S)


def _bounded(level: float, limit: int) -> float:
    return max(-float(limit), min(float(limit), level))


def _wait(level: float, need: float, limit: int | None) -> float:
    """Seconds until ``level`` reaches ``need`` at ``limit`` per minute (0: now)."""
    if limit is None or level >= need:
        return 0.0
    return (need - level) * WINDOW_S / limit


class Limiter:
    """Requests/min and tokens/min per API key, with memory bounded by ``max_keys``."""

    def __init__(self, max_keys: int = MAX_KEYS):
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _Buckets] = OrderedDict()
        self._swept = float("-inf")
        self.spent: dict[str, tuple[float, float]] = {}  # key name: (requests, tokens) charged here in all
        self._changed: set[str] = set()  # keys whose spend changed since the last report

    def __len__(self) -> int:
        """How many keys are remembered (those with a bucket not yet refilled)."""
        return len(self._keys)

    def check(self, key_name: str, limits: KeyLimits, tokens: int, now: float) -> float | None:
        """Admit a request of ``tokens`` (estimated) for ``key_name``: None if allowed (and charged),
        else the seconds after which it would be (a Retry-After; nothing is charged)."""
        if limits.requests_per_min is None and limits.tokens_per_min is None:
            return None
        self._sweep(now)
        buckets = self._refresh(key_name, limits, now)
        tokens = max(tokens, 0)
        need_tokens = min(tokens, limits.tokens_per_min or 0)  # a huge request waits for a full bucket only
        wait = max(
            _wait(buckets.requests, 1.0, limits.requests_per_min),
            _wait(buckets.tokens, need_tokens, limits.tokens_per_min),
        )
        if wait > 0:
            return wait
        if limits.requests_per_min is not None:
            buckets.requests -= 1
        if limits.tokens_per_min is not None:
            buckets.tokens -= tokens
        self._settle(buckets, limits)
        self._spend(key_name, 1, tokens)
        return None

    def debit(self, key_name: str, limits: KeyLimits, requests: float, tokens: float, now: float) -> None:
        """What another replica charged ``key_name`` since the last debit, taken from this replica's buckets too.
        They may go into debt, down to one window's allowance (this replica's next requests for the key then
        wait for the refill, two minutes at most)."""
        if limits.requests_per_min is None and limits.tokens_per_min is None:
            return
        buckets = self._refresh(key_name, limits, now)
        if limits.requests_per_min is not None:
            buckets.requests = _bounded(buckets.requests - requests, limits.requests_per_min)
        if limits.tokens_per_min is not None:
            buckets.tokens = _bounded(buckets.tokens - tokens, limits.tokens_per_min)
        self._settle(buckets, limits)

    def report(self, everything: bool = False) -> dict[str, tuple[float, float]]:
        """The totals of the keys whose spend changed since the last report (``everything``: of all keys)."""
        names = self.spent if everything else self._changed
        out = {name: self.spent[name] for name in names}
        self._changed = set()
        return out

    def unreported(self, names: Iterable[str]) -> None:
        """A report did not reach the others: send these again with the next one."""
        self._changed.update(names)

    def _spend(self, key_name: str, requests: float, tokens: float) -> None:
        before = self.spent.get(key_name, (0.0, 0.0))
        self.spent[key_name] = (before[0] + requests, before[1] + tokens)
        self._changed.add(key_name)

    def charge(self, key_name: str, limits: KeyLimits, tokens: int, now: float) -> None:
        """Settle a request's tokens after the fact: ``tokens`` more used than estimated (negative: fewer)."""
        if limits.tokens_per_min is None:
            return
        buckets = self._refresh(key_name, limits, now)
        buckets.tokens = min(float(limits.tokens_per_min), buckets.tokens - tokens)
        self._settle(buckets, limits)
        self._spend(key_name, 0, tokens)

    def _refresh(self, key_name: str, limits: KeyLimits, now: float) -> _Buckets:
        buckets = self._keys.get(key_name)
        if buckets is None:
            buckets = _Buckets(float(limits.requests_per_min or 0), float(limits.tokens_per_min or 0), now)
            self._keys[key_name] = buckets
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(key_name)
            elapsed = max(0.0, now - buckets.stamp)  # a clock stepping back refills nothing
            buckets.requests = _refilled(buckets.requests, limits.requests_per_min, elapsed)
            buckets.tokens = _refilled(buckets.tokens, limits.tokens_per_min, elapsed)
            buckets.stamp = max(buckets.stamp, now)
        return buckets

    @staticmethod
    def _settle(buckets: _Buckets, limits: KeyLimits) -> None:
        refill = max(
            _wait(buckets.requests, float(limits.requests_per_min or 0), limits.requests_per_min),
            _wait(buckets.tokens, float(limits.tokens_per_min or 0), limits.tokens_per_min),
        )
        buckets.full_at = buckets.stamp + refill

    def _sweep(self, now: float) -> None:
        """Forget keys whose buckets are full again (a fresh state would be the same): memory stays bounded."""
        if now - self._swept < SWEEP_EVERY_S:
            return
        self._swept = now
        for name in [name for name, buckets in self._keys.items() if buckets.full_at <= now]:
            del self._keys[name]
