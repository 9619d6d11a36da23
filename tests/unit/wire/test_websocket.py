"""Following where a WebSocket's messages end, and the frames the router sends in their place, checked against
the `websockets` package's own framing (RFC 6455): the frames are made by it, ours are parsed by it."""

from __future__ import annotations

import random
import zlib

import pytest
from websockets.extensions.permessage_deflate import PerMessageDeflate
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


def _deflated(messages: list[Frame], *, no_context_takeover: bool) -> bytes:
    """``messages`` as a server compressing them sends them (the websockets package's permessage-deflate)."""
    deflate = PerMessageDeflate(False, no_context_takeover, 15, 15)
    return b"".join(frame.serialize(mask=False, extensions=[deflate]) for frame in messages)


TURNS = [
    Frame(Opcode.TEXT, b'{"type":"transcription.delta","delta":"said \\"usage\\""}'),
    Frame(Opcode.TEXT, b'{"type":"transcription.done","text":"', fin=False),
    Frame(Opcode.PING, b"within"),  # not a message's text
    Frame(Opcode.CONT, b'a turn","usage":{"total_tokens":400}}'),
    Frame(Opcode.BINARY, bytes(range(256)) * 40),
]
SAID = b"".join(f.data for f in TURNS if f.opcode != Opcode.PING)


@pytest.mark.parametrize("no_context_takeover", [False, True], ids=["one window", "a window per message"])
def test_what_compressed_messages_say_is_inflated_into_the_sink_however_the_bytes_are_cut(
    no_context_takeover: bool,
) -> None:
    data = _deflated(TURNS * 3, no_context_takeover=no_context_takeover)
    agreed = "permessage-deflate" + ("; server_no_context_takeover" if no_context_takeover else "")
    for cut in range(len(data) + 1):
        said: list[bytes] = []
        messages = Messages(said.append, websocket.inflater(agreed))
        messages.read(data[:cut])
        messages.read(data[cut:])
        assert b"".join(said) == SAID * 3, cut
        assert messages.between


def test_what_plain_messages_say_goes_to_the_sink_as_it_is() -> None:
    data = b"".join(frame.serialize(mask=False) for frame in TURNS)
    said: list[bytes] = []
    messages = Messages(said.append, websocket.inflater(""))  # nothing agreed: nothing is compressed
    for i in range(len(data)):
        messages.read(data[i : i + 1])
    assert b"".join(said) == SAID


def test_a_small_message_that_inflates_to_megabytes_reaches_the_sink_in_bounded_pieces() -> None:
    data = _deflated([Frame(Opcode.TEXT, b" " * (8 << 20))], no_context_takeover=False)
    assert len(data) < 16 << 10
    sizes: list[int] = []
    Messages(lambda piece: sizes.append(len(piece)), websocket.inflater("permessage-deflate")).read(data)
    assert sum(sizes) == 8 << 20 and max(sizes) <= websocket.INFLATE_PIECE


def test_bytes_that_do_not_inflate_stop_the_reading_not_the_tunnel() -> None:
    said: list[bytes] = []
    messages = Messages(said.append, websocket.inflater("permessage-deflate"))
    garbage = websocket.frame(0x41, b"\xff" * 64)  # RSV1 set: compressed, or so it says
    plain = Frame(Opcode.TEXT, b"after").serialize(mask=False)
    assert messages.read(garbage + plain) == len(garbage + plain)  # followed to the end all the same
    assert said == [] and messages.between


@pytest.mark.parametrize(
    ("offer", "kept"),
    [
        ("permessage-deflate; client_max_window_bits", "permessage-deflate; client_max_window_bits"),
        ("x-webkit-deflate-frame, permessage-deflate", "permessage-deflate"),
        ("Permessage-Deflate; Server_No_Context_Takeover", "Permessage-Deflate; Server_No_Context_Takeover"),
        ("x-unknown", ""),
        ("", ""),
    ],
)
def test_only_permessage_deflate_is_offered_for_a_metered_session_and_its_answer_gives_the_inflater(
    offer: str, kept: str
) -> None:
    assert websocket.deflate_only(offer) == kept
    assert (websocket.inflater(kept) is None) == (kept == "")


def test_a_message_that_ends_its_deflate_stream_has_the_next_one_inflated_afresh() -> None:
    """RFC 7692 §7.2.3.4: a sender may end a message with a final block instead of an empty one."""
    data = b""
    for text in (b'{"usage":{"total_tokens":1}}', b"second", b"third"):
        squeeze = zlib.compressobj(wbits=-15)
        data += websocket.frame(0x41, squeeze.compress(text) + squeeze.flush(zlib.Z_FINISH))  # RSV1: compressed
    said: list[bytes] = []
    Messages(said.append, websocket.inflater("permessage-deflate")).read(data)
    assert b"".join(said) == b'{"usage":{"total_tokens":1}}secondthird'


def _random_session(rng: random.Random) -> tuple[list[Frame], list[bool]]:
    """A valid sequence of frames: messages whole or fragmented, with control frames anywhere allowed; and for
    each frame whether it leaves the side between two messages."""
    frames, between = [], []
    sizes = (0, 1, 125, 126, 127, 65_535, 65_536, rng.randrange(300))
    for _ in range(rng.randint(1, 8)):
        parts = rng.randint(1, 3)
        for part in range(parts):
            if rng.random() < 0.3:
                frames.append(Frame(rng.choice((Opcode.PING, Opcode.PONG)), rng.randbytes(rng.randrange(126))))
                between.append(part == 0)
            opcode = rng.choice((Opcode.TEXT, Opcode.BINARY)) if part == 0 else Opcode.CONT
            frames.append(Frame(opcode, rng.randbytes(rng.choice(sizes)), fin=part == parts - 1))
            between.append(part == parts - 1)
    return frames, between


@pytest.mark.parametrize("seed", range(40))
def test_random_sessions_cut_at_random_are_followed_as_the_websockets_package_frames_them(seed: int) -> None:
    rng = random.Random(seed)
    frames, between = _random_session(rng)
    mask, compressed = rng.random() < 0.3, rng.random() < 0.5
    deflate = [PerMessageDeflate(False, rng.random() < 0.5, 15, 15)] if compressed else None
    data, ends = b"", []
    for frame, ends_here in zip(frames, between, strict=True):
        data += frame.serialize(mask=mask, extensions=deflate)
        if ends_here:
            ends.append(len(data))
    cuts = sorted(rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 12)))
    reads = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert _ends(reads) == ends
    if mask:  # a client's: what it says is not read (a server masks nothing, RFC 6455 §5.1)
        return
    said: list[bytes] = []
    messages = Messages(said.append, websocket.inflater("permessage-deflate" if compressed else ""))
    for piece in reads:
        messages.read(piece)
    assert b"".join(said) == b"".join(f.data for f in frames if f.opcode not in (Opcode.PING, Opcode.PONG))
