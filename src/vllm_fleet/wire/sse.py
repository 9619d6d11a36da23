"""The one Server-Sent Events parser, shared by verify, bench and the router (STYLE.md #7).

vLLM's benchmark grew one SSE loop per endpoint and they drifted apart on what
a failure is; here every streaming reader feeds bytes to :class:`SSEDecoder`
and gets whole ``data:`` payloads back, in order, with events split across
network reads (or several in one read) handled the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

DONE = b"[DONE]"
# An event ends at a blank line, and lines end in LF or CRLF (vLLM's in LF, sse-starlette's in CRLF): a blank line
# follows a line's LF as LF or as CRLF.
EVENT_ENDS = (b"\n\n", b"\n\r\n")


def event_end(data: bytes, last: bool = True) -> int:
    """Where the last (or the first) whole event in ``data`` ends, without decoding any; -1 when none does
    (what a proxy forwarding whole events only needs)."""
    find = data.rfind if last else data.find
    ends = [i + len(mark) for mark in EVENT_ENDS if (i := find(mark)) >= 0]
    return (max(ends) if last else min(ends)) if ends else -1


class SSEDecoder:
    """Incremental decoder: :meth:`feed` bytes, get the data payloads of completed events.

    An event ends at a blank line; its ``data:`` lines are joined with a newline
    (the SSE rule). Other fields (``event:``, ``id:``, comments) are ignored.
    """

    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add ``chunk``; return the payloads of the events it completed (possibly none)."""
        buffer = self._buffer + chunk
        if b"\n" not in chunk:
            self._buffer = buffer
            return []
        *lines, self._buffer = buffer.split(b"\n")
        events: list[bytes] = []
        for raw in lines:
            line = raw[:-1] if raw.endswith(b"\r") else raw
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
        return events

    def close(self) -> list[bytes]:
        """End of stream: an event not followed by a blank line still counts."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return events


async def iter_events(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """Payloads of the SSE stream ``chunks`` (e.g. ``httpx.Response.aiter_bytes()``), stopping at ``[DONE]``."""
    decoder = SSEDecoder()
    async for chunk in chunks:
        for payload in decoder.feed(chunk):
            if payload == DONE:
                return
            yield payload
    for payload in decoder.close():
        if payload == DONE:
            return
        yield payload
