"""The shared SSE parser: events split across reads, several per read, CRLF, multi-line data, [DONE]."""

from __future__ import annotations

import asyncio

from vllm_fleet.wire.sse import SSEDecoder, iter_events

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
