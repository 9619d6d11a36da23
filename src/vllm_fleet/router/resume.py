"""Continuing a streamed (chat) completion on another backend when its backend dies mid-stream.

While a stream passes through, the router forwards whole SSE events only (a torn event is held
back until its end arrives) and keeps what it forwarded. When the backend fails mid-stream, the
assistant text the client already has is read from those events, and the same request goes to
another backend with that text as a final assistant message and vLLM's
``continue_final_message`` (``add_generation_prompt`` off), its token budget reduced by what was
streamed. The continuation's opening role event is dropped, so the client sees one stream.
A completion (/v1/completions) is continued from the prompt with the text appended: a text prompt as
text; a prompt of token ids with the text's ids, from the new backend's ``/tokenize`` (vLLM's).
A backend that fails after the answer's end (its finish_reason came; a usage event or [DONE] did
not) leaves nothing to continue: the router ends the stream with the [DONE] the client waits for.

What the client cannot tell apart: nothing in the text; the chunks after the switch carry the new
backend's completion id, and a final usage event counts the continuation only. Greedy decoding
continued from text can differ from an uninterrupted run where the text re-tokenises differently
(benchmarks/bench_continuation.py measures how often).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, NamedTuple

from vllm_fleet.wire.sse import DONE, EVENT_ENDS, SSEDecoder, event_end

MAX_HELD = 1024 * 1024  # a torn event held back longer than this: not SSE; passed on as it comes, not continued
DONE_EVENT = b"data: [DONE]\n\n"


class SoFar(NamedTuple):
    """What a stream's client has had: the assistant text, the content events it came in, whether the
    answer had finished (a finish_reason, or [DONE]) and whether [DONE] itself came."""

    text: str
    events: int
    finished: bool
    done: bool


class Transcript:
    """The SSE events forwarded so far (whole events only), read only if a continuation is needed."""

    def __init__(self) -> None:
        self._held = b""
        self._sent: list[bytes] = []
        self.whole = True  # only whole events went on (False: a stream that is not SSE, which cannot be continued)

    def whole_events(self, chunk: bytes) -> bytes:
        """The complete events of ``chunk`` (with what was held back before it); the torn end is held back."""
        if not self.whole:
            return chunk
        data = self._held + chunk if self._held else chunk
        end = event_end(data)
        if end < 0:
            if len(data) > MAX_HELD:
                self._held, self.whole = b"", False
                return data
            self._held = data
            return b""
        whole, self._held = data[:end], data[end:]
        self._sent.append(whole)
        return whole

    def sink(self, write: Callable[[bytes], bool]) -> Callable[[bytes], bool]:
        """``write`` for a piped stream, passing whole events only and keeping them: a piece that ends at an
        event's end with nothing held back (the usual one) goes on in one check, any other through
        :meth:`whole_events`."""
        sent, keep = self._sent, self.whole_events

        def sink(data: bytes) -> bool:
            if not self._held and data.endswith(EVENT_ENDS):
                sent.append(data)
                return write(data)
            return write(keep(data))

        return sink

    def cut(self) -> None:
        """The stream broke: what was held back never reached the client and is dropped (a continuation
        starts after the last whole event)."""
        self._held = b""

    def rest(self) -> bytes:
        """What is held back, once the stream has ended whole."""
        rest, self._held = self._held, b""
        return rest

    def so_far(self) -> SoFar:
        text: list[str] = []
        events, finished, done = 0, False, False
        for payload in SSEDecoder().feed(b"".join(self._sent)):
            if payload == DONE:
                finished = done = True
                continue
            try:
                choices = json.loads(payload).get("choices") or []
            except ValueError:
                continue
            for choice in choices[:1]:
                content = (choice.get("delta") or {}).get("content") or choice.get("text")  # chat, completion
                if content:
                    text.append(content)
                    events += 1
                finished |= choice.get("finish_reason") is not None
        return SoFar("".join(text), events, finished, done)


def continuation_body(body: bytes, text: str, tokens: int, text_ids: list[int] | None = None) -> bytes | None:
    """The request that continues after ``text`` (None when it cannot be continued: n > 1, neither messages
    nor a prompt, an echoed prompt, or a prompt of token ids without ``text_ids``, the text's ids)."""
    try:
        data: dict[str, Any] = json.loads(body)
    except ValueError:
        return None
    messages, prompt = data.get("messages"), _one_prompt(data)
    if data.get("n", 1) != 1 or not (isinstance(messages, list) or (prompt is not None and not data.get("echo"))):
        return None
    if not text:
        return body  # nothing reached the client yet: the request as it was
    if not isinstance(messages, list):
        if isinstance(prompt, str):
            return json.dumps(data | {"prompt": f"{prompt}{text}"} | _budget(data, tokens)).encode()
        if text_ids is None or prompt is None:
            return None
        return json.dumps(data | {"prompt": [*prompt, *text_ids]} | _budget(data, tokens)).encode()
    last = messages[-1] if messages else None
    if data.get("continue_final_message") and isinstance(last, dict) and last.get("role") == "assistant":
        messages = [*messages[:-1], {**last, "content": f"{last.get('content') or ''}{text}"}]
    else:
        messages = [*messages, {"role": "assistant", "content": text}]
    data |= {"messages": messages, "continue_final_message": True, "add_generation_prompt": False}
    return json.dumps(data | _budget(data, tokens)).encode()


def needs_text_ids(body: bytes) -> bool:
    """Whether the body is a completion whose one prompt is token ids: its continuation needs the text's ids."""
    try:
        data = json.loads(body)
    except ValueError:
        return False
    return isinstance(data, dict) and isinstance(_one_prompt(data), list)


def _one_prompt(data: dict[str, Any]) -> str | list[int] | None:
    """A completion's prompt when it is one: a text, or token ids (OpenAI's forms: "…", ["…"], [1, 2], [[1, 2]])."""
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(i, int) and not isinstance(i, bool) for i in prompt):
        return prompt
    return None


def _budget(data: dict[str, Any], tokens: int) -> dict[str, int]:
    """The token budgets less what was streamed already."""
    return {k: max(1, v - tokens) for k in ("max_tokens", "max_completion_tokens") if isinstance(v := data.get(k), int)}


def without_role_event(events: bytes) -> bytes:
    """``events`` less a leading role-only event (``delta: {role, content: ""}``): the client has had one."""
    end = event_end(events, last=False)
    decoder = SSEDecoder()
    first = decoder.feed(events[:end]) if end >= 0 else decoder.feed(events) + decoder.close()
    try:
        choices = json.loads(first[0]).get("choices") or [{}]
    except (IndexError, ValueError):
        return events
    delta = choices[0].get("delta") or {}
    if delta.get("role") and not delta.get("content"):
        return events[end:] if end >= 0 else b""
    return events
