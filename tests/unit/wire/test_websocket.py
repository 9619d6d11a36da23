"""Following where a WebSocket's messages end, and the frames the router sends in their place, checked against
the `websockets` package's own framing (RFC 6455): the frames are made by it, ours are parsed by it."""

from __future__ import annotations

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import Protocol, Side

from vllm_fleet.wire import websocket
from vllm_fleet.wire.websocket import Messages


def _frames(*, mask: bool) -> tuple[bytes, list[int]]:
    """A side's bytes, and the offsets in them where it is between two messages: short, 16-bit and 64-bit
    lengths, an empty message, and a fragmented one with a ping and a pong between its fragments."""
    frames = [
        (Frame(Opcode.TEXT, b'{"type":"transcription.delta"}'), True),
        (Frame(Opcode.BINARY, bytes(300)), True),  # a 16-bit length
        (Frame(Opcode.TEXT, b""), True),
        (Frame(Opcode.TEXT, b"begun ", fin=False), False),
        (Frame(Opcode.PING, b"p"), False),  # a control frame within a message: not between two
        (Frame(Opcode.CONT, b"and ", fin=False), False),
        (Frame(Opcode.PONG, b""), False),
        (Frame(Opcode.CONT, b"ended"), True),
        (Frame(Opcode.PING, b"between"), True),  # a control frame between two messages
        (Frame(Opcode.BINARY, bytes(70_000)), True),  # a 64-bit length
        (Frame(Opcode.TEXT, b"last"), True),
    ]
    data, ends = b"", []
    for frame, between in frames:
        data += frame.serialize(mask=mask)
        if between:
            ends.append(len(data))
    return data, ends


def _ends(reads: list[bytes]) -> list[int]:
    """Where ``to_end`` stops, over the whole of ``reads``."""
    messages, ends, offset = Messages(), [], 0
    for data in reads:
        at = 0
        while at < len(data):
            at += messages.read(data[at:], to_end=True)
            if messages.between:
                ends.append(offset + at)
        offset += len(data)
    return ends


@pytest.mark.parametrize("mask", [False, True], ids=["a server's", "a client's (masked)"])
def test_the_ends_of_messages_are_found_however_the_bytes_are_cut(mask: bool) -> None:
    data, ends = _frames(mask=mask)
    assert _ends([data]) == ends
    assert _ends([data[i : i + 1] for i in range(len(data))]) == ends
    # every cut within a frame's head or near an end, and a sample of those within the long payload
    cuts = sorted({*range(0, 600), *range(600, len(data) - 40, 997), *range(len(data) - 40, len(data) + 1)})
    for cut in cuts:
        assert _ends([data[:cut], data[cut:]]) == ends, cut


def test_read_without_to_end_follows_all_and_says_whether_it_ended_between_two_messages() -> None:
    data, ends = _frames(mask=False)
    for cut in (*ends, ends[2] + 3, ends[-1] - 1):
        messages = Messages()
        assert messages.read(data[:cut]) == cut
        assert messages.between == (cut in ends), cut


def _parsed(data: bytes) -> list[Frame]:
    """The frames a real client endpoint reads from ``data``."""
    client = Protocol(Side.CLIENT)
    client.receive_data(data)
    return [event for event in client.events_received() if isinstance(event, Frame)]


def test_the_routers_own_frames_are_what_a_websocket_client_reads() -> None:
    small, large, huge = "a turn's error", "x" * 1000, "y" * 70_000
    frames = _parsed(websocket.text(small) + websocket.text(large) + websocket.text(huge))
    assert [(f.opcode, f.data.decode()) for f in frames] == [(Opcode.TEXT, t) for t in (small, large, huge)]
    (closing,) = _parsed(websocket.close(websocket.POLICY_VIOLATION, "API key 'k' is over its limit"))
    assert Close.parse(closing.data) == Close(1008, "API key 'k' is over its limit")


def test_a_long_reason_is_cut_to_what_a_close_frame_holds_at_a_characters_boundary() -> None:
    (closing,) = _parsed(websocket.close(1008, "é" * 100))  # 200 bytes of UTF-8
    reason = Close.parse(closing.data).reason  # a reason that is not UTF-8 would fail here (RFC 6455 §8.1)
    assert reason == "é" * 61 and len(closing.data) <= 125
