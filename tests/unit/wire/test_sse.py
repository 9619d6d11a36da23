"""The shared SSE parser: events split across reads, several per read, CRLF, multi-line data, [DONE]."""

from __future__ import annotations

import asyncio

import pytest

from vllm_fleet.wire.sse import SSEDecoder, event_end, iter_events

STREAM = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: comment\nevent: x\ndata: line1\ndata: line2\n\ndata: [DONE]\n\n'
EXPECTED = [b'{"a": 1}', b'{"b": 2}', b"line1\nline2", b"[DONE]"]


def test_whole_stream_in_one_read():
    assert SSEDecoder().feed(STREAM) == EXPECTED


def test_every_split_point_gives_the_same_events():
    for cut in range(len(STREAM) + 1):
        decoder = SSEDecoder()
        assert decoder.feed(STREAM[:cut]) + decoder.feed(STREAM[cut:]) == EXPECTED, cut


def test_byte_by_byte():
    decoder = SSEDecoder()
    assert [e for i in range(len(STREAM)) for e in decoder.feed(STREAM[i : i + 1])] == EXPECTED


def test_close_flushes_an_unterminated_event():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: last") == []
    assert decoder.close() == [b"last"]


def test_iter_events_stops_at_done():
    async def chunks():
        for piece in (b"data: 1\n", b"\ndata: [DONE]\n\n", b"data: after\n\n"):
            yield piece

    async def collect():
        return [e async for e in iter_events(chunks())]

    assert asyncio.run(collect()) == [b"1"]


@pytest.mark.parametrize(
    ("data", "last", "first"),
    [
        (b"data: a\n\ndata: b\n\n", 18, 9),
        (b"data: a\r\n\r\ndata: b\r\n\r\n", 22, 11),
        (b"data: a\r\n\ndata: b\n\r\ndata: c", 20, 10),  # mixed: a blank line in either form ends an event
        (b"data: a\r\n", -1, -1),
        (b"", -1, -1),
    ],
)
def test_event_end_finds_where_whole_events_end_in_either_line_end(data: bytes, last: int, first: int) -> None:
    assert (event_end(data), event_end(data, last=False)) == (last, first)
    if last >= 0:  # what it cuts at is where the decoder sees the events end
        assert SSEDecoder().feed(data[:last]) == SSEDecoder().feed(data)
