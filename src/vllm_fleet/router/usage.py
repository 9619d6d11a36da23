"""The tokens an answer used, read from its bytes as they pass: a key's token limit is charged an estimate up
front (body.py: the prompt's and its ``max_tokens``) and settled to this once the answer is over.

The answer's own count comes first: the last ``usage`` object in it (an OpenAI answer ends with one; a
stream has one when its request asked ``stream_options.include_usage``), whose ``total_tokens`` the
backend's tokenizer counted. A stream without one is counted by its events: vLLM sends a token or more
in each, so the prompt's estimate plus the events is about what it used, never far below. Any other
answer (no usage, not a stream) keeps the estimate.

A WebSocket session (vLLM's /v1/realtime) answers many times, each ``transcription.done`` event with the
usage of its turn: a ``Tally`` sums them as the session's bytes pass, and each is charged as it comes.

The bytes are searched, not parsed: ``"usage"`` followed by a quote cannot occur inside a JSON string (its
quotes are escaped there), so the last one is the answer's own; only the last ``TAIL`` bytes are kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable

TAIL = 4096  # an OpenAI answer's usage is within its last few hundred bytes
# A whole usage value: an object (its details one level deep) or null; its total is searched for within.
_USAGE_VALUE = re.compile(rb'"usage"\s*:\s*(?:null|\{(?:[^{}]|\{[^{}]*\})*\})')
_TOTAL = re.compile(rb'"total_tokens"\s*:\s*(\d+)')
MAX_USAGE = 512  # bytes: a usage value not whole within this is not one, and is passed over


class Meter:
    """What one answer used, from the bytes it passes."""

    __slots__ = ("_tail", "events")

    def __init__(self) -> None:
        self._tail = b""
        self.events = 0  # SSE events seen (a stream's)

    def saw(self, data: bytes) -> None:
        """Part of a whole (not streamed) answer."""
        self._tail = (self._tail + data)[-TAIL:] if self._tail else data[-TAIL:]

    def sink(self, write: Callable[[bytes], bool], events: bool) -> Callable[[bytes], bool]:
        """``write`` for an answer's pieces, counting its events on the way when it is an event stream."""

        def sink(data: bytes) -> bool:
            if events:
                self.events += data.count(b"data:")
            self.saw(data)
            return write(data)

        return sink

    def used(self, prompt_tokens: int) -> int | None:
        """The tokens used: the answer's own count, else ``prompt_tokens`` plus a stream's events; else None."""
        at = self._tail.rfind(b'"usage"')
        if at >= 0 and (whole := _USAGE_VALUE.match(self._tail, at)) and (total := _TOTAL.search(whole[0])):
            return int(total[1])
        return prompt_tokens + self.events if self.events else None


class Tally:
    """The usage objects a session's bytes carry, one after another (a WebSocket's, server to client, not
    compressed), summed as they pass; a usage cut between two reads is read whole with the next."""

    __slots__ = ("_carry",)

    def __init__(self) -> None:
        self._carry = b""  # from a usage not yet whole (or a read's last bytes, where one may begin)

    def feed(self, data: bytes) -> int:
        """The tokens of the usages that ``data`` completes."""
        text = self._carry + data if self._carry else data
        tokens, at = 0, 0
        while (at := text.find(b'"usage"', at)) >= 0:
            whole = _USAGE_VALUE.match(text, at)
            if whole is None and len(text) - at < MAX_USAGE:
                break  # not whole yet: kept for the next read
            if whole is not None and (total := _TOTAL.search(whole[0])):
                tokens += int(total[1])
            at = whole.end() if whole is not None else at + 1
        self._carry = text[at:] if at >= 0 else text[-6:]  # a `"usage` cut at its end is met again whole
        return tokens
