"""The tokens an answer used, read from its bytes as they pass: a key's token limit is charged an estimate up
front (body.py: the prompt's and its ``max_tokens``) and settled to this once the answer is over.

The answer's own count comes first: the last ``usage`` object in it (an OpenAI answer has one, before
vLLM's ``prompt_logprobs`` when asked for; a stream has one when its request asked
``stream_options.include_usage``, one per event with ``continuous_usage_stats``, each the total so far),
whose ``total_tokens`` the backend's tokenizer counted. A stream without one is counted by its events:
vLLM sends a token or more in each, so the prompt's estimate plus the events is about what it used, never
far below. Any other answer (no usage, not a stream) keeps the estimate.

A WebSocket session (vLLM's /v1/realtime) answers many times, each ``transcription.done`` event with the
usage of its turn: each is charged as it comes, and may end the session (``metering``).

The bytes are searched, not parsed or kept: ``"usage"`` with its quotes cannot occur inside a JSON string
(they are escaped there), so each one followed by ``:`` and an object is an answer's own; one that is a
value (``"object": "usage"``) or names no object is passed over at once. Only a usage not yet whole when
a read ends is held for the next (at most ``MAX_USAGE`` bytes).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable

log = logging.getLogger("vllm_fleet.router")
_KEY = b'"usage"'
# A whole usage value: an object (its details one level deep) or null; its total is searched for within.
# Possessive (never backtracking): a value that is not one fails in one pass.
_USAGE_VALUE = re.compile(rb'"usage"\s*+:\s*+(?:null|\{(?:[^{}]++|\{[^{}]*+\})*+\})')
_TOTAL = re.compile(rb'"total_tokens"\s*+:\s*+(\d++)')
# What may still become a whole usage value once more bytes come: the key, then nothing yet or a start of one.
_PENDING = re.compile(rb'"usage"\s*+(?::\s*+(?:\{.*+|n|nu|nul)?)?\Z', re.DOTALL)
MAX_USAGE = 1024  # bytes: a usage value not whole within this is not one, and is passed over


class Tally:
    """The usage objects that bytes passing one after another carry: their sum, and the last one's count; a
    usage cut between two reads is read whole with the next."""

    __slots__ = ("_carry", "last")

    def __init__(self) -> None:
        self._carry = b""  # a usage not yet whole, or a read's last bytes that may begin one
        self.last: int | None = None  # the last usage's total_tokens

    def feed(self, data: bytes) -> int:
        """The tokens of the usages that ``data`` completes."""
        text = self._carry + data if self._carry else data
        tokens, at = 0, 0
        while (at := text.find(_KEY, at)) >= 0:
            whole = _USAGE_VALUE.match(text, at)
            if whole is None and len(text) - at < MAX_USAGE and _PENDING.match(text, at):
                self._carry = text[at:]  # not whole yet: read again with what follows
                return tokens
            if whole is not None and (total := _TOTAL.search(whole[0])):
                self.last = int(total[1])
                tokens += self.last
            at = whole.end() if whole is not None else at + 1
        quote = text.rfind(b'"', -len(_KEY) + 1)  # a `"usage` cut at the end is met again whole
        self._carry = text[quote:] if quote >= 0 and _KEY.startswith(text[quote:]) else b""
        return tokens


def metering(used: Callable[[int], Awaitable[str | None]], end: Callable[[str], object]) -> Callable[[bytes], None]:
    """A sink for what a session's messages say (a WebSocket's, inflated: wire/websocket.Messages): each usage,
    as it passes, is charged by ``used``; when a charge answers why the session must end, ``end`` is called
    with that."""
    tally, charging = Tally(), set()

    def charged(task: asyncio.Task[str | None]) -> None:
        charging.discard(task)
        if task.cancelled():
            return
        if (error := task.exception()) is not None:  # the usage stays uncharged; the session is not cut for it
            log.warning("a session's usage could not be charged: %s", error)
        elif why := task.result():
            end(why)

    def sink(data: bytes) -> None:
        if tokens := tally.feed(data):
            task = asyncio.ensure_future(used(tokens))
            charging.add(task)  # held: the loop keeps only a weak reference
            task.add_done_callback(charged)

    return sink


class Meter:
    """What one answer used, from the bytes it passes."""

    __slots__ = ("_usages", "events")

    def __init__(self) -> None:
        self._usages = Tally()
        self.events = 0  # SSE events seen (a stream's)

    def saw(self, data: bytes) -> None:
        """Part of a whole (not streamed) answer."""
        self._usages.feed(data)

    def sink(self, write: Callable[[bytes], bool], events: bool) -> Callable[[bytes], bool]:
        """``write`` for an answer's pieces, counting its events on the way when it is an event stream."""
        feed = self._usages.feed

        def sink(data: bytes) -> bool:
            if events:
                self.events += data.count(b"data:")
            feed(data)
            return write(data)

        return sink

    def used(self, prompt_tokens: int) -> int | None:
        """The tokens used: the answer's own count, else ``prompt_tokens`` plus a stream's events; else None."""
        if self._usages.last is not None:
            return self._usages.last
        return prompt_tokens + self.events if self.events else None
