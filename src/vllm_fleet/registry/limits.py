"""Per-key request and token limits: a key's two token buckets, and the leases router replicas take from them.

A bucket holds a minute's allowance and refills continuously (limit / 60 per second), so a key may
burst up to its per-minute limit and then runs at its rate. A request is charged its estimated
tokens (the prompt's and its ``max_tokens``) up front, and settled to what its answer says it used
once it is over (router/usage.py): a wallet may so owe tokens, which its next lease pays into the
bucket before the next request's need is looked at (or which goes back with what it holds). A request
larger than the whole per-minute allowance is let through when the bucket is full and leaves it in
debt, rather than being refused forever.

The buckets live in the registry (``Registry.take_allowance``), one pair per key, shared by every
router replica. A replica does not ask the registry for each request: it takes a lease, the
allowance of about a second of the key's rate (at least what the request needs), keeps it in a
``Wallet`` and spends from that with no I/O; the next request that finds the wallet short takes
the next lease. A lease is taken from the buckets atomically, so what all the replicas admit
together never passes a key's limits, however its requests are spread, a burst sent to every
replica at once included; and a client on one replica (a Service balances connections, not
requests) still has the key's whole allowance. What a wallet holds unused is given back once the
key goes quiet on that replica, so it is not kept from the others.

Pure: the caller passes ``now`` (a clock shared by the replicas: ``time.time()``), so tests drive a fake clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vllm_fleet.registry.records import KeyLimits

WINDOW_S = 60.0
LEASE_S = 1.0  # a lease is this many seconds of the key's rate: one registry round trip per second per key
IDLE_S = 2.0  # a wallet unused this long is given back


@dataclass(frozen=True)
class Allowance:
    """An amount of a key's allowance: requests and tokens."""

    requests: float = 0.0
    tokens: float = 0.0

    def __bool__(self) -> bool:
        return self.requests != 0 or self.tokens != 0  # a debt (tokens < 0) is something too


NOTHING = Allowance()


def limited(limits: KeyLimits) -> bool:
    return limits.requests_per_min is not None or limits.tokens_per_min is not None


@dataclass
class Buckets:
    """A key's two token buckets (the level of an unlimited one stays 0)."""

    requests: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, limits: KeyLimits, now: float) -> Buckets:
        return cls(float(limits.requests_per_min or 0), float(limits.tokens_per_min or 0), now)

    @classmethod
    def stored(cls, limits: KeyLimits, row: Sequence[float] | None, now: float) -> Buckets:
        """The buckets as the registry stores them (requests, tokens, stamp); full for a key with none yet (no row,
        or a row of NULLs from an outer join)."""
        if row is None or row[2] is None:
            return cls.full(limits, now)
        return cls(*row)

    def take(
        self, limits: KeyLimits, want: Allowance, need: Allowance, now: float, owed: float = 0.0
    ) -> tuple[Allowance, float]:
        """Take up to ``want`` if at least ``need`` is there: (what was taken, 0.0); else nothing is taken:
        (``NOTHING``, the seconds until ``need`` would be). A need larger than the whole minute waits for a
        full bucket only, and takes it into debt. ``owed`` (tokens a wallet's answers used beyond what they
        were charged) comes off first, whatever the answer."""
        self._refill(limits, now)
        if owed:
            self.give(limits, Allowance(tokens=-owed), now)
        pairs = ((self.requests, limits.requests_per_min, want.requests, need.requests),
                 (self.tokens, limits.tokens_per_min, want.tokens, need.tokens))  # fmt: skip
        wait = max(_wait(level, min(needed, limit), limit) for level, limit, _, needed in pairs if limit is not None)
        if wait > 0:
            return NOTHING, wait
        # Whole requests and tokens only: a wallet never holds a fraction no request can use.
        requests, tokens = (
            max(needed, math.floor(min(wanted, level))) if limit else 0.0 for level, limit, wanted, needed in pairs
        )
        self.requests -= requests
        self.tokens = max(-float(limits.tokens_per_min or 0), self.tokens - tokens)  # debt: two minutes' wait at most
        return Allowance(requests, tokens), 0.0

    def left(self, limits: KeyLimits, now: float) -> Allowance:
        """What the buckets hold at ``now`` (refilled; nothing is taken)."""
        refilled = replace(self)
        refilled._refill(limits, now)
        return Allowance(refilled.requests, refilled.tokens)

    def give(self, limits: KeyLimits, amount: Allowance, now: float) -> None:
        """Put an unused lease back (never past a full bucket), or a wallet's debt (never past the debt bound)."""
        self._refill(limits, now)
        tpm = float(limits.tokens_per_min or 0)
        self.requests = min(float(limits.requests_per_min or 0), self.requests + amount.requests)
        self.tokens = max(-tpm, min(tpm, self.tokens + amount.tokens))

    def _refill(self, limits: KeyLimits, now: float) -> None:
        elapsed = max(0.0, now - self.stamp)  # a clock stepping back (or a replica's clock behind) refills nothing
        self.requests = _refilled(self.requests, limits.requests_per_min, elapsed)
        self.tokens = _refilled(self.tokens, limits.tokens_per_min, elapsed)
        self.stamp = max(self.stamp, now)


def _refilled(level: float, limit: int | None, elapsed: float) -> float:
    if limit is None:
        return 0.0
    return min(float(limit), level + elapsed * limit / WINDOW_S)


def _wait(level: float, need: float, limit: int) -> float:
    """Seconds until ``level`` reaches ``need`` at ``limit`` per minute (0: now)."""
    return 0.0 if level >= need else (need - level) * WINDOW_S / limit


@dataclass
class Wallet:
    """What one replica holds of a key's allowance, and when it last spent from it."""

    limits: KeyLimits
    requests: float = 0.0
    tokens: float = 0.0
    used_at: float = 0.0
    retry_at: float = 0.0  # a request refused: when the buckets will have had what it needed
    quiet_until: float = 0.0  # until then, the key's requests here are refused without asking the buckets again

    def spend(self, tokens: int, now: float) -> bool:
        """Charge one request of ``tokens`` if the wallet holds it (an unlimited bucket needs nothing)."""
        rpm, tpm = self.limits.requests_per_min, self.limits.tokens_per_min
        if (rpm is not None and self.requests < 1) or (tpm is not None and self.tokens < tokens):
            return False
        if rpm is not None:
            self.requests -= 1
        if tpm is not None:
            self.tokens -= tokens
        self.used_at = now
        return True

    def lease(self, tokens: int) -> tuple[Allowance, Allowance, float]:
        """(want, need, owed): the lease to ask for, the least of it one more request of ``tokens`` needs, and
        the wallet's debt, handed over with the asking (the wallet owes nothing after)."""
        rpm, tpm = self.limits.requests_per_min, self.limits.tokens_per_min
        owed, self.tokens = max(0.0, -self.tokens), max(0.0, self.tokens)
        need = Allowance(max(0.0, 1 - self.requests) if rpm else 0.0, max(0.0, tokens - self.tokens) if tpm else 0.0)
        ahead = [(limit or 0) * LEASE_S // WINDOW_S for limit in (rpm, tpm)]
        return Allowance(need.requests + ahead[0], need.tokens + ahead[1]), need, owed

    def refuse(self, wait: float, now: float) -> None:
        """The buckets had not what a request needed: refuse the key's next requests here, for up to a lease's
        span, without asking them again (a client past its limit must not turn each request into a registry
        write)."""
        self.retry_at, self.quiet_until = now + wait, now + min(wait, LEASE_S)

    def refused(self, now: float) -> float | None:
        """The seconds to wait, while requests are refused without asking; else None."""
        return self.retry_at - now if now < self.quiet_until else None

    def receive(self, amount: Allowance) -> None:
        self.requests += amount.requests
        self.tokens += amount.tokens

    def empty(self) -> Allowance:
        """All it holds, taken out (to give back)."""
        held, self.requests, self.tokens = Allowance(self.requests, self.tokens), 0.0, 0.0
        return held
